"""Shared state across replicas: the backend-neutral core of ``seawall.redis``.

:func:`build` swaps a dependency's primitives for shared ones, with the same
interfaces, so the engine needs no change: an advisory breaker, a global
bulkhead, a shared rate limiter, a shared fallback cache tier.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigError
from ..telemetry._redact import mask_url
from ._breaker import AdvisoryBreaker
from ._bulkhead import SharedBulkhead
from ._cache import SharedResponseCache
from ._ratelimit import SharedRateLimiter
from ._state import DependencyView, SharedState, Unavailable

if TYPE_CHECKING:
    from .._config import Config, Policy, StateSettings
    from .._runtime import Runtime

__all__ = [
    "AdvisoryBreaker",
    "adopt",
    "DependencyView",
    "SharedBulkhead",
    "SharedRateLimiter",
    "SharedResponseCache",
    "SharedState",
    "Unavailable",
    "build",
    "config_problems",
    "missing_state",
    "snapshot",
    "state_changed",
]


def missing_state(name: str, shared: object) -> ConfigError:
    """The error for a shared policy without a state backend, with its key path."""
    from .._config import _line

    return ConfigError(
        [
            _line(
                f"dependencies.{name}.shared",
                'needs a state backend ([state] backend = "redis" in the file, '
                "or Registry(state=seawall.redis.RedisState(...)))",
                shared,
            )
        ]
    )


def config_problems(config: Config, state: SharedState | None) -> list[str]:
    """Every problem of *config*'s shared parts, checked before a registry changes."""
    problems: list[str] = []
    for spec in config.dependencies.values():
        shared = spec.policy.shared
        if shared is None:
            continue
        if state is None:
            problems.extend(missing_state(spec.name, shared).problems)
    return problems


def state_changed(before: StateSettings | None, after: StateSettings | None) -> str:
    """The problem of a reload whose ``[state]`` table differs from the registry's.

    The state backend is built once, with the registry: swapping it under calls
    in flight (their slots, tokens and breaker evidence held in the old one)
    is not done; a restart applies the new table.
    """
    import dataclasses

    if before is None:
        what = "a [state] table was added"
    elif after is None:
        what = "the [state] table was removed"
    else:
        what = ", ".join(
            f"{f.name} {getattr(before, f.name)!r} -> {getattr(after, f.name)!r}"
            for f in dataclasses.fields(before)
            if getattr(before, f.name) != getattr(after, f.name)
        )
    return (
        "state: cannot change on reload (the state backend is built with the registry "
        f"and never swapped under calls in flight; restart to apply it): {what}"
    )


def build(rt: Runtime, state: SharedState) -> None:
    """Give *rt* the shared primitives its policy's ``shared`` asks for."""
    policy = rt.policy
    shared = policy.shared
    assert shared is not None
    if shared.breaker == "advisory" and policy.breaker is not None:
        if rt.endpoints:
            # One breaker per endpoint, each following its own shared verdict.
            rt.endpoint_breakers = {
                url: AdvisoryBreaker(
                    policy.breaker,
                    clock=rt.clock,
                    dependency=rt.name,
                    shared=shared,
                    state=state,
                    endpoint=url,
                )
                for url in rt.endpoints
            }
        else:
            rt.breaker = AdvisoryBreaker(
                policy.breaker, clock=rt.clock, dependency=rt.name, shared=shared, state=state
            )
    if shared.bulkhead is not None:
        rt.bulkhead = SharedBulkhead(  # type: ignore[assignment]
            policy.bulkhead, shared.bulkhead, dependency=rt.name, state=state, clock=rt.clock
        )
    fallback = policy.fallback
    if shared.fallback and fallback is not None and fallback.stale_if_error is not None:
        rt.cache = SharedResponseCache(
            max_entries=fallback.max_entries,
            max_bytes=fallback.max_bytes,
            clock=rt.clock,
            dependency=rt.name,
            stale_if_error=fallback.stale_if_error,
            state=state,
            secret=state.cache_secret,
        )
    limit = shared.shared_rate_limit
    if limit is not None and policy.rate_limit is not None:
        rt.limiter = SharedRateLimiter(  # type: ignore[assignment]
            policy.rate_limit, limit, clock=rt.clock, dependency=rt.name, state=state
        )


def adopt(rt: Runtime, fresh: Runtime, old: Policy) -> None:
    """On reload: take from *fresh* the shared parts whose settings changed."""
    new_shared, old_shared = fresh.policy.shared, old.shared

    def changed(*names: str) -> bool:
        return any(getattr(new_shared, n, None) != getattr(old_shared, n, None) for n in names)

    if changed("breaker", "quorum", "quorum_ratio", "assist_ratio"):
        rt.breaker, rt.endpoint_breakers = fresh.breaker, fresh.endpoint_breakers
    if changed("bulkhead"):
        rt.bulkhead = fresh.bulkhead
    if changed("rate_limit"):
        rt.limiter = fresh.limiter
    if changed("fallback"):
        rt.cache = fresh.cache


def snapshot(rt: Runtime) -> dict[str, Any]:
    """The ``"shared"`` entry of a dependency's snapshot."""
    state = rt.state
    assert state is not None
    view = state.view(rt.name)
    breaker = rt.breaker
    entry: dict[str, Any]
    if isinstance(breaker, AdvisoryBreaker):
        entry = breaker.shared_snapshot()
    else:
        entry = {
            "verdict": None,
            "live_replicas": view.live,
            "tripped_replicas": view.tripped,
            "override": None,
        }
    endpoints = {
        mask_url(url): b.shared_snapshot()
        for url, b in rt.endpoint_breakers.items()
        if isinstance(b, AdvisoryBreaker)
    }
    if endpoints:
        entry["endpoints"] = endpoints
    bulkhead: Any = rt.bulkhead
    if isinstance(bulkhead, SharedBulkhead):
        entry["bulkhead"] = bulkhead.shared_snapshot()
    limiter: Any = rt.limiter
    if isinstance(limiter, SharedRateLimiter):
        entry["rate_limit"] = limiter.shared_snapshot()
    cache = rt.cache
    if isinstance(cache, SharedResponseCache):
        entry["cache"] = {"local_entries": len(cache), "dropped_writes": cache.drops}
    return entry
