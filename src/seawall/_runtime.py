"""Per-dependency runtime state, built from a frozen Policy and a clock."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._breaker import Breaker
from ._bulkhead import BulkheadHandle
from ._cache import ResponseCache
from ._clock import Clock
from ._config import ErrorMatcher, Policy
from ._decision import Frame
from ._latency import LatencyEstimate
from ._ratelimit import RateLimiter
from ._report import CallReport
from ._retry import BudgetTracker
from .telemetry._otel import track
from .telemetry._redact import mask_url

if TYPE_CHECKING:
    from ._shared import SharedState
    from ._transport import TransportCore

__all__ = ["Runtime", "matcher"]


def matcher(rule: ErrorMatcher) -> Callable[[Exception], bool]:
    """Turn a tuple of exception types or a predicate into a predicate."""
    if isinstance(rule, tuple):
        types = rule
        if not types:
            return lambda exc: False
        return lambda exc: isinstance(exc, types)
    return rule


class Runtime:
    """The live state of one dependency: breaker, bulkhead, rate limiter, retry budget.

    Owned by whatever serves the dependency (a Registry, a standalone client or
    transport); the config objects stay frozen and stateless.
    """

    __slots__ = (
        "__weakref__",
        "_rejection_reports",
        "breaker",
        "budget",
        "bulkhead",
        "cache",
        "clock",
        "endpoint_breakers",
        "endpoints",
        "ignore_on",
        "latency",
        "limiter",
        "name",
        "policy",
        "record_on",
        "retry_on",
        "state",
        "transports",
    )

    def __init__(
        self,
        name: str,
        policy: Policy,
        clock: Clock,
        *,
        endpoints: Sequence[str] = (),
        state: SharedState | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self.clock = clock
        cfg = policy.breaker
        #: Redundant providers' base URLs; each has its own breaker, and then the
        #: dependency has none of its own.
        self.endpoints: tuple[str, ...] = tuple(endpoints)
        self.endpoint_breakers: dict[str, Breaker] = {}
        if cfg and self.endpoints:
            for url in self.endpoints:
                self.endpoint_breakers[url] = Breaker(
                    cfg, clock=clock, dependency=name, endpoint=url
                )
        self.breaker = (
            Breaker(cfg, clock=clock, dependency=name) if cfg and not self.endpoints else None
        )
        self.record_on = matcher(cfg.record_on) if cfg else matcher(())
        self.ignore_on = matcher(cfg.ignore_on) if cfg else matcher(())
        self.bulkhead = (
            BulkheadHandle(policy.bulkhead, dependency=name, clock=clock)
            if policy.bulkhead
            else None
        )
        self.limiter = (
            RateLimiter(policy.rate_limit, clock=clock, dependency=name)
            if policy.rate_limit
            else None
        )
        retry = policy.retry
        self.budget = BudgetTracker(retry.budget, clock=clock) if retry and retry.budget else None
        self.retry_on = matcher(retry.retry_on) if retry else matcher(())
        fallback = policy.fallback
        self.cache = (
            ResponseCache(
                max_entries=fallback.max_entries, max_bytes=fallback.max_bytes, clock=clock
            )
            if fallback is not None and fallback.stale_if_error is not None
            else None
        )
        hedge = policy.hedge
        #: Recent attempt latencies, for a hedge delay taken from them.
        self.latency = (
            LatencyEstimate(0.95) if hedge is not None and hedge.delay_from == "p95" else None
        )
        #: The transports serving this dependency (for pool gauges).
        self.transports: weakref.WeakSet[TransportCore] = weakref.WeakSet()
        self._rejection_reports: dict[tuple[str, str | None, str | None], CallReport] = {}
        #: The registry's shared-state backend (None: local state only).
        self.state = state
        if policy.shared is not None:
            from ._shared import build, missing_state

            if state is None:
                raise missing_state(name, policy.shared)
            build(self, state)  # the shared breaker, bulkhead, rate limiter, cache
        track(self)

    def reconfigure(self, policy: Policy, endpoints: Sequence[str] = ()) -> None:
        """Adopt a new policy in place (Registry.reload), keeping the state of every
        part whose settings did not change: a breaker keeps its state and window,
        a bulkhead its slots, a rate limiter its tokens, the cache its entries.

        In place, so that every guard, client and transport holding this runtime
        follows; calls in flight finish on the parts they started with.
        """
        fresh = Runtime(self.name, policy, self.clock, endpoints=endpoints, state=self.state)
        old = self.policy
        same_endpoints = tuple(endpoints) == self.endpoints
        if not (policy.breaker == old.breaker and same_endpoints):
            self.breaker = fresh.breaker
            self.endpoint_breakers = fresh.endpoint_breakers
            self.record_on, self.ignore_on = fresh.record_on, fresh.ignore_on
        if policy.bulkhead != old.bulkhead:
            self.bulkhead = fresh.bulkhead
        if policy.rate_limit != old.rate_limit:
            self.limiter = fresh.limiter
        old_budget = old.retry.budget if old.retry else None
        new_budget = policy.retry.budget if policy.retry else None
        if new_budget != old_budget:
            self.budget = fresh.budget
        if policy.fallback != old.fallback:
            self.cache = fresh.cache
        if policy.shared != old.shared:
            from ._shared import adopt

            adopt(self, fresh, old)  # the shared parts whose settings changed
        if policy.hedge != old.hedge:
            self.latency = fresh.latency
        self.retry_on = fresh.retry_on
        self.endpoints = fresh.endpoints
        self.policy = policy
        self._rejection_reports.clear()

    def rejection_report(self, reason: str) -> CallReport:
        """The report of a call refused outright (nothing sent, no wait, no retry).

        Shared per reason and breaker state: they are all alike, and an outage
        refuses calls by the thousand.
        """
        state = self.breaker.state.value if self.breaker is not None else None
        shared = self.shared_mode(None)
        report = self._rejection_reports.get((reason, state, shared))
        if report is None:
            report = self._rejection_reports[(reason, state, shared)] = CallReport(
                dependency=self.name,
                outcome=reason,
                attempts=0,
                breaker_state=state,
                timeouts=self.policy.timeouts,
                shared=shared,
            )
        return report

    def shared_mode(self, frame: Frame | None) -> str | None:
        """The report's ``shared``: None without shared state; ``"local"`` when the
        state is degraded or did not answer this call in time; else ``"redis"``."""
        state = self.state
        if state is None or self.policy.shared is None:
            return None
        if not state.connected or (frame is not None and frame.shared_local):
            return "local"
        return "redis"

    def snapshot(self) -> dict[str, Any]:
        """Plain, JSON-ready figures (the Registry's snapshot entry, sans HTTP parts).

        Endpoint URLs are shown with their passwords masked (``user:[secure]@``).
        """
        entry: dict[str, Any] = {
            "breaker": self.breaker.statistics().as_dict() if self.breaker else None,
            "bulkhead": self.bulkhead.statistics().as_dict() if self.bulkhead else None,
            "rate_limit": self.limiter.statistics() if self.limiter else None,
            "endpoints": [
                {"url": mask_url(url), "breaker": b.statistics().as_dict()}
                for url, b in self.endpoint_breakers.items()
            ],
        }
        if self.state is not None and self.policy.shared is not None:
            from ._shared import snapshot

            entry["shared"] = snapshot(self)
        return entry
