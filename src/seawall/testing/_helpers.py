"""Test helpers: force breakers, assert on call reports."""

from __future__ import annotations

from typing import Any

from .._breaker import Breaker
from .._client import ClientCore
from .._guard import Guard
from .._registry import Registry
from .._report import report_of
from .._transport import TransportCore

__all__ = ["assert_report", "force_closed", "force_open"]


def _breakers(target: Any, name: str | None) -> list[Breaker]:
    if isinstance(target, Registry):
        names = [name] if name is not None else target.names
        found: list[Breaker] = []
        for n in names:
            try:
                found.extend(target.breakers(n).values())
            except LookupError:
                if name is not None:
                    raise
        if name is not None and not found:
            raise LookupError(f"dependency {name!r} has no circuit breaker")
        return found
    if isinstance(target, ClientCore):  # seawall's and seawall.httpx2's clients
        target = target.resilient_transport
    if isinstance(target, TransportCore):
        rt = target.runtime
    elif isinstance(target, Guard):
        rt = target.rt
    elif isinstance(target, Breaker):
        return [target]
    else:
        raise TypeError(
            f"target: must be a Registry, ResilientClient, ResilientTransport, Guard or Breaker, got {target!r}"
        )
    breakers = [rt.breaker] if rt.breaker is not None else list(rt.endpoint_breakers.values())
    if not breakers:
        raise LookupError(f"dependency {rt.name!r} has no circuit breaker in its policy")
    return breakers


def force_open(target: Any, name: str | None = None) -> None:
    """Force the breakers of *target* open (a Registry: every dependency, or *name*'s)."""
    for breaker in _breakers(target, name):
        breaker.force_open()


def force_closed(target: Any, name: str | None = None) -> None:
    """Force the breakers of *target* closed, with empty windows."""
    for breaker in _breakers(target, name):
        breaker.force_closed()


def assert_report(obj: object, **expected: Any) -> None:
    """Assert that the CallReport of a response or error has the *expected* fields.

    ``assert_report(response, outcome="circuit_open", fallback="cache")``. On a
    mismatch the AssertionError lists every differing field and the report.
    """
    report = report_of(obj)
    if report is None:
        raise AssertionError(f"no seawall CallReport on {obj!r}")
    wrong = []
    for field, want in expected.items():
        if not hasattr(report, field):
            raise AssertionError(f"CallReport has no field {field!r}")
        got = getattr(report, field)
        if field == "retries" and isinstance(want, list):
            want = tuple(want)
        if got != want:
            wrong.append(f"{field}: expected {want!r}, got {got!r}")
    if wrong:
        raise AssertionError("; ".join(wrong) + f"\n{report!r}")
