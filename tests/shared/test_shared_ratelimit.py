"""The shared rate limit on a real Redis: GCRA against a reference model, the bound of
reservations across replicas, retry_after, waiting."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator

import hypothesis.strategies as st
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from shared_helpers import Cluster, shared_policy
from shared_redis_server import RedisServer

import seawall
from seawall._shared import SharedRateLimiter
from seawall._shared._lua import GCRA
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
