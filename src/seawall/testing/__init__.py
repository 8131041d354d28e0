"""Tools for testing code that uses seawall: yours and ours.

* :class:`ManualClock`: time that moves only when the test says so.
* :func:`disable_waits`: backoff and Retry-After waits become no-ops.
* :class:`FaultyUpstream` and :class:`Fault`: a real HTTP server on loopback
  that injects faults on demand and logs what it received.
* :class:`PaymentProvider` and :class:`Charge`: a fake payment provider on
  loopback, with its own ledger of charges, faults scripted the same way.
* :func:`force_open`, :func:`force_closed`: drive breakers by hand.
* :func:`assert_report`: assert on a call's CallReport.
* a pytest plugin with the fixtures ``seawall_clock``, ``faulty_upstream``,
  ``payment_provider`` and ``seawall_no_waits``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .._clock import set_waits_disabled
from ._clock import ManualClock

if TYPE_CHECKING:
    from ._helpers import assert_report, force_closed, force_open
    from ._payments import Charge, PaymentProvider
    from ._upstream import Fault, FaultyUpstream, RecordedRequest

__all__ = [
    "Charge",
    "Fault",
    "FaultyUpstream",
    "ManualClock",
    "PaymentProvider",
    "RecordedRequest",
    "assert_report",
    "disable_waits",
    "force_closed",
    "force_open",
]


@contextmanager
def disable_waits() -> Iterator[None]:
    """Turn backoff and Retry-After waits into no-ops inside the block.

    A plain (sync) context manager, usable in async code, like stamina's
    testing mode: retries still run, count and report as usual, without
    waiting. Attempt and total timeouts still apply.
    """
    set_waits_disabled(1)
    try:
        yield
    finally:
        set_waits_disabled(-1)


def __getattr__(name: str) -> Any:
    # The server pulls in h11 and threading, the helpers the HTTP client: load
    # them only when asked for.
    if name in ("Fault", "FaultyUpstream", "RecordedRequest"):
        from . import _upstream

        return getattr(_upstream, name)
    if name in ("Charge", "PaymentProvider"):
        from . import _payments

        return getattr(_payments, name)
    if name in ("assert_report", "force_closed", "force_open"):
        from . import _helpers

        return getattr(_helpers, name)
    raise AttributeError(f"module 'seawall.testing' has no attribute {name!r}")
