"""Replicas of one app in one process, on one Redis namespace and one ManualClock."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import seawall
from seawall.redis import RedisState
from seawall.testing import ManualClock

T0 = 1_000.0
DEP = "pay"


def shared_policy(
    *,
    shared: seawall.Shared,
    minimum_calls: int = 4,
    window_size: int = 10,
    bulkhead: seawall.Bulkhead | None = None,
    rate_limit: seawall.RateLimit | None = None,
    **kwargs: Any,
) -> seawall.Policy:
    return seawall.Policy(
        retry=None,
        timeouts=seawall.Timeouts(attempt=None, total=None),
        breaker=seawall.CircuitBreaker(
            minimum_calls=minimum_calls, window_size=window_size, open_duration=30.0
        ),
        bulkhead=bulkhead,
        rate_limit=rate_limit,
        shared=shared,
        **kwargs,
    )


@dataclass
class Replica:
    registry: seawall.Registry
    state: RedisState
    guard: seawall.Guard

    @property
    def breaker(self) -> Any:
        return self.guard.breaker

    @property
    def bulkhead(self) -> Any:
        return self.guard.bulkhead

    @property
    def limiter(self) -> Any:
        return self.guard.rt.limiter

    async def sync(self) -> None:
        assert await self.state.sync(), f"sync failed: {self.state.snapshot()}"

    async def fail(self, n: int = 1) -> None:
        """*n* calls that fail (ConnectionError)."""

        async def boom() -> None:
            raise ConnectionError("upstream down")

        for _ in range(n):
            with contextlib.suppress(ConnectionError, seawall.RejectedError):
                await self.guard.call(boom)

    async def succeed(self, n: int = 1) -> None:
        async def fine() -> None:
            return None

        for _ in range(n):
            await self.guard.call(fine)


@dataclass
class Cluster:
    """Replicas of one app, in one process, on one Redis namespace and one clock."""

    url: str
    namespace: str
    clock: ManualClock
    stack: contextlib.AsyncExitStack
    replicas: list[Replica] = field(default_factory=list)

    def state(self, **kwargs: Any) -> RedisState:
        options: dict[str, Any] = {
            "namespace": self.namespace,
            "time": "client",
            "clock": self.clock,
            "sync_interval": 30.0,
            "lease_ttl": 300.0,
            "budget": 1.0,
            "command_timeout": 2.0,
        }
        options.update(kwargs)
        return RedisState(self.url, **options)

    async def add(self, policy: seawall.Policy, n: int = 1, **state: Any) -> list[Replica]:
        added = []
        for _ in range(n):
            st = self.state(**state)
            registry = seawall.Registry(clock=self.clock, state=st)
            guard = registry.guard(DEP, policy)
            await self.stack.enter_async_context(registry)
            replica = Replica(registry, st, guard)
            self.replicas.append(replica)
            added.append(replica)
        return added

    async def sync_all(self) -> None:
        for replica in self.replicas:
            await replica.sync()


async def until(condition: Any, what: str = "condition", limit: float = 10.0) -> None:
    """Wait for *condition()* (background Redis replies landing), checking every millisecond.

    It waits for an event, not out a timer: *limit* only bounds a test that
    would otherwise hang.
    """
    import anyio

    with anyio.fail_after(limit):
        while not condition():  # noqa: ASYNC110 - set by replies from Redis, not by us
            await anyio.sleep(0.001)
