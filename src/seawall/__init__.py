"""seawall: keep an async service standing when the services it calls are slow or failing.

Timeouts, retries only where safe, bulkheads, circuit breakers and fallbacks
for anyio-based apps that call out over httpx; a guard for any other awaitable.
"""

import typing as _typing

from ._breaker import Breaker, BreakerState, BreakerStatistics, Transition
from ._bulkhead import BulkheadHandle, BulkheadStatistics
from ._client import ResilientClient
from ._clock import Clock, MonotonicClock
from ._config import (
    AdaptiveLimit,
    Backoff,
    Bulkhead,
    CircuitBreaker,
    Config,
    DependencySpec,
    Fallback,
    GlobalBulkhead,
    Hedge,
    Policy,
    Pool,
    RateLimit,
    Retry,
    RetryBudget,
    Shared,
    SharedRateLimit,
    Timeouts,
    load_config,
)
from ._deadline import deadline, deadline_remaining
from ._exceptions import (
    BulkheadFullError,
    CallInTransactionError,
    CircuitOpenError,
    ConfigError,
    DeadlineExceededError,
    OutcomeUnknownError,
    RateLimitedError,
    RejectedError,
    SeawallError,
    SeawallWarning,
)
from ._guard import Guard, guard
from ._registry import Registry
from ._report import CallReport, Outcome, RetryReason, report_of
from ._transport import AttemptTimeout, ResilientTransport

__all__ = [
    "AdaptiveLimit",
    "AttemptTimeout",
    "Backoff",
    "Breaker",
    "BreakerState",
    "BreakerStatistics",
    "Bulkhead",
    "BulkheadFullError",
    "BulkheadHandle",
    "BulkheadStatistics",
    "CallInTransactionError",
    "CallReport",
    "CircuitBreaker",
    "CircuitOpenError",
    "Clock",
    "Config",
    "ConfigError",
    "DeadlineExceededError",
    "DependencySpec",
    "Fallback",
    "GlobalBulkhead",
    "Guard",
    "Hedge",
    "MonotonicClock",
    "Outcome",
    "OutcomeUnknownError",
    "Policy",
    "Pool",
    "RateLimit",
    "RateLimitedError",
    "Registry",
    "RejectedError",
    "ResilientClient",
    "ResilientTransport",
    "Retry",
    "RetryBudget",
    "RetryReason",
    "SeawallError",
    "SeawallWarning",
    "Shared",
    "SharedRateLimit",
    "Timeouts",
    "Transition",
    "deadline",
    "deadline_remaining",
    "guard",
    "load_config",
    "report_of",
]


def __getattr__(name: str) -> _typing.Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("seawall")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            return "0+unknown"
    raise AttributeError(f"module 'seawall' has no attribute {name!r}")
