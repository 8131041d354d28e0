"""Hedged requests through the engine: guard and HTTP, against a real loopback server."""

from __future__ import annotations

import dataclasses
import pathlib
import random
import statistics
import time

import anyio
import pytest

import seawall
from seawall import Bulkhead, CircuitBreaker, Hedge, Policy, Registry, Retry, RetryBudget
from seawall._latency import LatencyEstimate
from seawall.testing import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

NO_WAIT = seawall.Backoff(initial=0.0, maximum=0.0, jitter=False)


def hedged(**parts: object) -> Policy:
    parts.setdefault("hedge", Hedge(delay=0.05))
    parts.setdefault("retry", Retry(attempts=2, backoff=NO_WAIT, budget=None))
    parts.setdefault("breaker", None)
    return Policy(**parts)  # type: ignore[arg-type]


async def test_a_slow_first_attempt_is_overtaken_by_its_hedge(upstream: FaultyUpstream) -> None:
    upstream.route("/q", Fault.latency(2.0), Fault.ok())
    async with seawall.ResilientClient("h", base_url=upstream.url, policy=hedged()) as client:
        with anyio.fail_after(1.5):  # the first attempt alone would take 2 s
            response = await client.get("/q")
        assert response.status_code == 200
        report = seawall.report_of(response)
        assert report is not None
        assert report.roles == ("first", "hedge")
        assert report.winner == 2
        assert report.attempts == 2
    assert upstream.count("/q") == 2


async def test_a_fast_first_attempt_sends_no_hedge(upstream: FaultyUpstream) -> None:
    upstream.route("/q", Fault.ok())
    async with seawall.ResilientClient(
        "h", base_url=upstream.url, policy=hedged(hedge=Hedge(delay=1.0))
    ) as client:
        response = await client.get("/q")
    report = seawall.report_of(response)
    assert report is not None
    assert (report.roles, report.winner) == (("first",), 1)
    assert upstream.count("/q") == 1


async def test_a_keyless_post_is_never_hedged(upstream: FaultyUpstream) -> None:
    upstream.route("/pay", Fault.latency(0.4))
    async with seawall.ResilientClient("h", base_url=upstream.url, policy=hedged()) as client:
        response = await client.post("/pay", json={})
        assert response.status_code == 200
        keyed = await client.post("/pay", json={}, idempotency_key="k-1")
        assert keyed.status_code == 200
    assert upstream.count("/pay", idempotency_key="k-1") == 2  # the keyed one was hedged
    assert upstream.count("/pay") == 3  # the keyless one went once


async def test_a_retryable_failure_of_one_attempt_does_not_stop_the_other(
    upstream: FaultyUpstream,
) -> None:
    upstream.route("/q", Fault.latency(0.3), Fault.error(503))
    single = Retry(attempts=1, backoff=NO_WAIT, budget=None)  # 503 is retryable, no retry left
    async with seawall.ResilientClient(
        "h", base_url=upstream.url, policy=hedged(retry=single)
    ) as client:
        response = await client.get("/q")
    assert response.status_code == 200  # the hedge's 503 came first; the first's 200 won
    report = seawall.report_of(response)
    assert report is not None
    assert report.winner == 1


async def test_a_hedge_without_a_free_slot_is_skipped_not_queued(upstream: FaultyUpstream) -> None:
    upstream.route("/q", Fault.latency(0.3))
    policy = hedged(bulkhead=Bulkhead(max_concurrent=1, max_wait=5))
    async with seawall.ResilientClient("h", base_url=upstream.url, policy=policy) as client:
        response = await client.get("/q")
        assert client.bulkhead.statistics().in_use == 0
    report = seawall.report_of(response)
    assert report is not None
    assert report.roles == ("first",)
    assert upstream.count("/q") == 1


async def test_hedges_spend_the_retry_budget(upstream: FaultyUpstream) -> None:
    upstream.route("/q", Fault.latency(0.3))
    budget = RetryBudget(ratio=0.0, min_per_second=0.0)
    policy = hedged(retry=Retry(attempts=2, backoff=NO_WAIT, budget=budget))
    async with seawall.ResilientClient("h", base_url=upstream.url, policy=policy) as client:
        response = await client.get("/q")
    report = seawall.report_of(response)
    assert report is not None
    assert report.roles == ("first",)  # the budget had nothing to spend on a hedge
    assert upstream.count("/q") == 1


async def test_the_loser_is_neutral_to_the_breaker(upstream: FaultyUpstream) -> None:
    upstream.route("/q", Fault.latency(2.0), Fault.ok())
    policy = hedged(breaker=CircuitBreaker())
    async with seawall.ResilientClient("h", base_url=upstream.url, policy=policy) as client:
        with anyio.fail_after(1.5):
            await client.get("/q")
        stats = client.breaker.statistics()
    assert (stats.calls, stats.failures) == (1, 0)  # the winner only; the loser was cancelled


async def test_hedges_go_to_the_next_endpoint(
    upstream: FaultyUpstream, upstream_b: FaultyUpstream
) -> None:
    upstream.route("/q", Fault.latency(2.0))
    upstream_b.route("/q", Fault.ok())
    async with seawall.ResilientClient(
        "h", endpoints=[upstream.url, upstream_b.url], policy=hedged()
    ) as client:
        with anyio.fail_after(1.5):
            response = await client.get("/q")
    report = seawall.report_of(response)
    assert report is not None
    assert report.winner == 2
    assert (upstream.count("/q"), upstream_b.count("/q")) == (1, 1)


async def test_a_guarded_call_is_hedged() -> None:
    calls = 0

    async def lookup() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep(5)
            return "slow"
        return "fast"

    g = seawall.guard("db", hedged(), registry=Registry())
    with anyio.fail_after(2):
        assert await g.call(lookup) == "fast"
    assert calls == 2


async def test_the_deadline_bounds_every_hedge(upstream: FaultyUpstream) -> None:
    upstream.route("/q", Fault.hang())
    policy = hedged(
        hedge=Hedge(delay=0.05, max_hedges=2), timeouts=seawall.Timeouts(attempt=None, total=0.4)
    )
    async with seawall.ResilientClient("h", base_url=upstream.url, policy=policy) as client:
        with anyio.fail_after(3), pytest.raises(seawall.DeadlineExceededError) as info:
            await client.get("/q")
    report = seawall.report_of(info.value)
    assert report is not None
    assert report.roles == ("first", "hedge", "hedge")
    assert upstream.count("/q") == 3


async def test_a_tail_of_slow_answers_is_cut_by_hedging(upstream: FaultyUpstream) -> None:
    """5% of requests take 1 s: hedged after 50 ms, the tail goes, at a small extra load."""
    upstream.route("/q", dataclasses.replace(Fault.latency(1.0), ratio=0.05, seed=11))
    calls = 200
    latencies: list[float] = []
    async with seawall.ResilientClient("h", base_url=upstream.url, policy=hedged()) as client:
        for _ in range(calls):
            t0 = time.perf_counter()
            response = await client.get("/q")
            latencies.append(time.perf_counter() - t0)
            assert response.status_code == 200
    p99 = statistics.quantiles(latencies, n=100)[98]
    extra = upstream.count("/q") - calls
    print(f"p99 {p99 * 1000:.0f} ms, extra requests {extra} ({extra / calls:.1%})")
    assert p99 < 0.5  # about 1 s without hedging (see bench/hedging.py for the figures)
    assert extra <= 0.10 * calls


def test_the_p95_estimate_is_within_its_documented_error() -> None:
    rng = random.Random(3)
    estimate = LatencyEstimate(0.95, refresh=1)
    samples = [rng.expovariate(1 / 0.02) for _ in range(20_000)]
    for s in samples:
        estimate.observe(s)
    true = statistics.quantiles(samples[-2000:], n=100)[94]
    got = estimate.quantile()
    assert got is not None
    # Never below the truth, at most one bucket (10%) above, plus the decay's
    # drift over the window: within 15% of the recent samples' p95.
    assert true * 0.9 <= got <= true * 1.15, (true, got)


def test_a_hedge_table_in_toml(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "seawall.toml"
    path.write_text(
        """
        [dependencies.search]
        base_url = "http://search.internal"
        [dependencies.search.hedge]
        delay_from = "p95"
        min_delay = 0.02
        max_hedges = 2
        """
    )
    config = seawall.load_config(path)
    hedge = config.dependencies["search"].policy.hedge
    assert hedge == Hedge(delay_from="p95", min_delay=0.02, max_hedges=2)


@pytest.mark.parametrize(
    ("table", "line"),
    [
        ({"delay": 0}, "hedge.delay: must be > 0, got 0"),
        ({"max_hedges": 9}, "hedge.max_hedges: must be <= 8, got 9"),
        ({"delay_from": "p99"}, "hedge.delay_from: must be 'p95' or None, got 'p99'"),
        (
            {"min_delay": 2.0, "max_delay": 1.0},
            "hedge.min_delay: must be <= max_delay (1.0), got 2.0",
        ),
        ({"jitter": True}, "hedge.jitter: unknown key, got True"),
    ],
)
def test_a_bad_hedge_table_names_the_key(table: dict[str, object], line: str) -> None:
    with pytest.raises(seawall.ConfigError) as info:
        Policy.from_mapping({"hedge": table})
    assert line in info.value.problems
