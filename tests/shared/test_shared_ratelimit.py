"""The shared rate limit on a real Redis: GCRA against a reference model, the bound of
reservations across replicas, retry_after, waiting."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from typing import Any

import hypothesis.strategies as st
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from shared_helpers import Cluster, shared_policy
from shared_redis_server import RedisServer

import seawall
from seawall._shared import SharedRateLimiter
from seawall._shared._lua import GCRA, PROBE
from seawall.redis import RedisState
from seawall.testing import ManualClock

# -- the script against a reference model --------------------------------------------------


class Gcra:
    """GCRA over reservations, as the docs define it: k tokens move TAT by k * T, granted
    while TAT stays within burst * T of now."""

    def __init__(self, interval: float, burst: float) -> None:
        self.T = interval
        self.burst = burst
        self.tat = 0.0

    def reserve(self, now: float, want: int) -> tuple[int, float]:
        tat = max(self.tat, now)
        n = math.floor((now + self.burst * self.T - tat) / self.T + 1e-9)
        if n < 1:
            return 0, tat + self.T - now - self.burst * self.T
        n = min(n, want)
        self.tat = tat + n * self.T
        return n, 0.0


@pytest.fixture(scope="module")
def sync_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.script_load(GCRA.source)
    yield client
    client.close()


ops = st.lists(
    st.tuples(st.integers(min_value=0, max_value=400_000), st.integers(min_value=1, max_value=8)),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    interval_us=st.sampled_from([1_000.0, 10_000.0, 33_333.333, 250_000.0]),
    burst=st.sampled_from([1.0, 2.5, 5.0, 20.0]),
    ops=ops,
)
def test_the_script_is_gcra(
    sync_client: redis.Redis, interval_us: float, burst: float, ops: list[tuple[int, int]]
) -> None:
    key = f"{{seawall:h{uuid.uuid4().hex[:8]}}}"
    model = Gcra(interval_us, burst)
    now = 1e12
    granted_at: list[tuple[float, int]] = []
    for advance, want in ops:
        now += advance
        got, retry = sync_client.evalsha(
            GCRA.sha, 1, key, "pay", repr(now), want, repr(interval_us), repr(burst)
        )
        expected = model.reserve(now, want)
        assert (int(got), pytest.approx(float(retry), abs=1e-3)) == (expected[0], expected[1])
        assert 0 <= int(got) <= want
        if int(got):
            granted_at.append((now, int(got)))
        else:
            assert float(retry) > 0
    # Conformance: in any window of w us, at most w / T + burst tokens.
    for i, (start, _) in enumerate(granted_at):
        total = 0
        for t, n in granted_at[i:]:
            total += n
            assert total <= (t - start) / interval_us + burst + 1e-6


# -- replicas sharing one limit ------------------------------------------------------------


def limited(
    rate: float,
    burst: float,
    *,
    reserve: int | None = None,
    ttl: float = 0.05,
    max_wait: float = 0.0,
) -> seawall.Policy:
    return shared_policy(
        shared=seawall.Shared(rate_limit=seawall.SharedRateLimit(reserve=reserve, reserve_ttl=ttl)),
        rate_limit=seawall.RateLimit(rate=rate, burst=burst, max_wait=max_wait),
    )


@pytest.mark.anyio
async def test_replicas_together_stay_within_rate_times_window_plus_ttl_plus_burst(
    cluster: Cluster, clock: ManualClock
) -> None:
    rate, burst, ttl = 100.0, 10.0, 0.05
    replicas = await cluster.add(limited(rate, burst, ttl=ttl), 3)
    limiter = replicas[0].limiter
    assert isinstance(limiter, SharedRateLimiter)
    assert limiter.statistics()["reserve"] == 5  # 50 ms worth
    admitted: list[float] = []
    refusals: list[float | None] = []
    attempts = 0
    seconds, step = 2.0, 0.002
    start = clock.now()
    for _ in range(int(seconds / step)):
        for replica in replicas:
            for _ in range(2):  # each replica wants 1,000 calls/s
                attempts += 1
                try:
                    await replica.limiter.acquire(0.0)
                except seawall.RateLimitedError as exc:
                    refusals.append(exc.retry_after)
                else:
                    admitted.append(clock.now())
        clock.advance(step)
    for w in (0.01, 0.05, 0.1, 0.5, 1.0, 2.0):
        bound = rate * (w + ttl) + burst
        j = 0
        for i in range(len(admitted)):
            while admitted[i] - admitted[j] >= w:
                j += 1
            assert i - j + 1 <= bound, (w, i - j + 1, bound)
    assert len(admitted) >= 0.9 * (rate * seconds + burst)
    assert all(r is not None and r >= 0 for r in refusals)
    # Saturated 30-fold, the replicas ask Redis at most once per refusal's retry_after.
    reservations = sum(r.state.counters.round_trips["reserve"] for r in replicas)
    assert reservations <= 0.2 * attempts
    assert clock.now() - start == pytest.approx(seconds)


@pytest.mark.anyio
async def test_a_refusal_carries_the_scripts_retry_after(cluster: Cluster) -> None:
    a, b = await cluster.add(limited(10, 2, reserve=1), 2)
    await a.succeed(2)  # the burst
    with pytest.raises(seawall.RateLimitedError) as caught:
        await b.succeed(1)
    assert caught.value.retry_after == pytest.approx(0.1, abs=1e-3)
    grants = b.state.counters.round_trips["reserve"]
    with pytest.raises(seawall.RateLimitedError):
        await b.succeed(1)  # no token before retry_after: Redis is not asked again
    assert b.state.counters.round_trips["reserve"] == grants


@pytest.mark.anyio
async def test_a_call_waits_for_its_token_within_max_wait(
    cluster: Cluster, clock: ManualClock
) -> None:
    (a,) = await cluster.add(limited(10, 1, reserve=1, max_wait=1.0))
    await a.succeed(1)
    await a.succeed(1)  # waited for the next token, on the clock
    assert clock.slept == [pytest.approx(0.1, abs=1e-3)]


@pytest.mark.anyio
async def test_exact_mode_is_one_reservation_per_call(cluster: Cluster, clock: ManualClock) -> None:
    (a,) = await cluster.add(limited(1000, 1000, reserve=1, ttl=0.0))
    await a.succeed(5)
    assert a.state.counters.round_trips["reserve"] == 5


@pytest.mark.anyio
async def test_a_steady_stream_is_served_from_reservations_fetched_ahead(
    cluster: Cluster, clock: ManualClock
) -> None:
    (a,) = await cluster.add(limited(1000, 100))
    limiter = a.limiter
    for _ in range(400):
        await limiter.acquire(0.0)  # never refused: 1 call per ms, under the rate
        clock.advance(0.001)
    reservations = a.state.counters.round_trips["reserve"]
    # Pockets of at most 50 tokens: at least 8 reservations, and far fewer than calls.
    assert 8 <= reservations <= 40


# -- the native GCRA command, where the server has it ------------------------------------


class GcraServer:
    """A client that passes everything to a real Redis 7, but says (COMMAND INFO, through
    the probe script) that it has GCRA and answers the command itself, as Redis's
    src/gcra.c does (integer microseconds, all or nothing, retry_after in whole
    seconds), on a clock of the test's: Redis 7 has no GCRA to test against."""

    def __init__(self, client: Any, clock: ManualClock) -> None:
        self._client = client
        self._clock = clock
        self.tats: dict[str, int] = {}
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def evalsha(self, sha: str, *args: Any) -> Any:
        if sha == PROBE.sha:
            return 1
        return await self._client.evalsha(sha, *args)

    async def execute_command(self, *args: Any) -> Any:
        if args[0] != "GCRA":
            return await self._client.execute_command(*args)
        self.calls.append(args)
        _, key, max_burst, per_period, period, token, count = args
        assert (token, per_period) == ("TOKENS", 1)
        burst = int(max_burst) + 1
        now = int(self._clock.now() * 1e6)
        tat = self.tats.get(key, now)
        interval = int(float(period) * 1e6 / per_period + 0.5)
        variance, increment = interval * burst, interval * int(count)
        new_tat = max(now, tat) + increment
        diff = now - (new_tat - variance)
        if diff < 0:
            limited, ttl = 1, tat - now
            retry = math.ceil(-diff / 1e6) if increment <= variance else -1
        else:
            limited, ttl, retry = 0, new_tat - now, -1
            self.tats[key] = new_tat
        nxt = variance - ttl
        remaining = nxt // interval if nxt > -interval else 0
        return [limited, burst, remaining, retry, math.ceil(ttl / 1e6)]


@pytest.mark.anyio
async def test_redis_7_has_no_gcra_so_the_script_reserves(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    (a,) = await cluster.add(limited(100, 10), time="server")
    assert a.state.native_gcra is False
    await a.succeed(1)
    await a.sync()
    assert a.state.counters.round_trips["probe"] == 1  # once, not again at each sync
    assert a.limiter.shared_snapshot()["gcra"] == "lua"
    client = redis_server.client()
    assert client.exists(f"{{seawall:{cluster.namespace}}}:g:pay") == 1
    client.close()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("burst", "time", "native"),
    [
        pytest.param(10.0, "server", True, id="server-time"),
        pytest.param(10.0, "client", False, id="client-time"),
        pytest.param(2.5, "server", False, id="fractional-burst"),
    ],
)
async def test_a_server_reporting_gcra_gets_the_native_command(
    cluster: Cluster, clock: ManualClock, burst: float, time: str, native: bool
) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(cluster.url)
    server = GcraServer(client, clock)
    state = RedisState(
        client=server,
        namespace=cluster.namespace,
        time=time,  # type: ignore[arg-type]
        clock=clock,
        sync_interval=30.0,
        lease_ttl=300.0,
        budget=1.0,
    )
    registry = seawall.Registry(clock=clock, state=state)
    guard = registry.guard("pay", limited(100, burst, reserve=4))
    try:
        async with registry:
            assert state.native_gcra is True  # what the server reported
            assert guard.rt.limiter.shared_snapshot()["gcra"] == ("native" if native else "lua")
            await guard.call(noop)
            if native:
                await native_reservations(state, server, clock, cluster.namespace)
            else:
                assert server.calls == []
    finally:
        await client.aclose()


async def native_reservations(
    state: RedisState, server: GcraServer, clock: ManualClock, namespace: str
) -> None:
    key = f"{{seawall:{namespace}}}:n:pay"
    assert server.calls == [("GCRA", key, 9, 1, "0.01", "TOKENS", 4)]
    # Ask for 4, 2 left: refused whole, then the 2 asked for again.
    server.tats[key] = int(clock.now() * 1e6) + 80_000
    granted, retry_after = await state.reserve("pay", 4, 0.01, 10)
    assert (granted, retry_after) == (2, 0.0)
    assert [c[-1] for c in server.calls[-2:]] == [4, 2]
    # None left: refused, the wait at most one interval (not the command's 1 s).
    granted, retry_after = await state.reserve("pay", 4, 0.01, 10)
    assert granted == 0
    assert 0 < retry_after <= 0.01


async def noop() -> None:
    return None
