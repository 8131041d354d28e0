"""Per-dependency runtime state, built from a frozen Policy and a clock."""

from __future__ import annotations

from collections.abc import Callable

from ._breaker import Breaker
from ._bulkhead import BulkheadHandle
from ._clock import Clock
from ._config import ErrorMatcher, Policy
from ._ratelimit import RateLimiter
from ._retry import BudgetTracker

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
        "breaker",
        "budget",
        "bulkhead",
        "clock",
        "ignore_on",
        "limiter",
        "name",
        "policy",
        "record_on",
        "retry_on",
    )

    def __init__(self, name: str, policy: Policy, clock: Clock) -> None:
        self.name = name
        self.policy = policy
        self.clock = clock
        cfg = policy.breaker
        self.breaker = Breaker(cfg, clock=clock, dependency=name) if cfg else None
        self.record_on = matcher(cfg.record_on) if cfg else matcher(())
        self.ignore_on = matcher(cfg.ignore_on) if cfg else matcher(())
        self.bulkhead = (
            BulkheadHandle(policy.bulkhead, dependency=name) if policy.bulkhead else None
        )
        self.limiter = (
            RateLimiter(policy.rate_limit, clock=clock, dependency=name)
            if policy.rate_limit
            else None
        )
        retry = policy.retry
        self.budget = (
            BudgetTracker(retry.budget, clock=clock) if retry and retry.budget else None
        )
        self.retry_on = matcher(retry.retry_on) if retry else matcher(())

    def snapshot(self) -> dict[str, object]:
        """Plain, JSON-ready figures (the Registry's snapshot entry, sans HTTP parts)."""
        return {
            "breaker": self.breaker.statistics().as_dict() if self.breaker else None,
            "bulkhead": self.bulkhead.statistics().as_dict() if self.bulkhead else None,
            "rate_limit": self.limiter.statistics() if self.limiter else None,
        }
