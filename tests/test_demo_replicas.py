"""seawall._demo.replicas: the embedded Redis, the replicas' shared registry, the round
robin, and the meter that reads the provider's concurrency from outside.

Tests that need a redis-server start one of their own (a free loopback port, a
temp dir); without one they skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx
import pytest

import seawall
from seawall._demo import replicas
from seawall._demo.replicas import (
    GLOBAL_CAP,
    EmbeddedRedis,
    MeterChild,
    Opening,
    Record,
    ReplicasError,
    RoundRobin,
    followed,
    peak_concurrency,
    records_of,
    redis_for,
    shared_registry,
)
from seawall.testing import Fault, FaultyUpstream

DEMO = [sys.executable, "-m", "seawall", "demo"]


@pytest.fixture
def anyio_backend() -> str:
    """redis.asyncio is asyncio-only."""
    return "asyncio"


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The embedded redis-server the demo would start."""
    if replicas.find_redis_server() is None:
        message = "redis-server is not installed; .ci/run installs it"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    url, server = redis_for(None)
    assert server is not None
    try:
        yield url
    finally:
        server.stop()


# -- the figures ------------------------------------------------------------------------------


def rec(replica: int, start: float, end: float | None, status: str = "200") -> Record:
    return Record(replica, start, end, status)


@pytest.mark.parametrize(
    ("records", "peak"),
    [
        pytest.param([], 0, id="none"),
        pytest.param([rec(0, 0, 1), rec(1, 2, 3)], 1, id="apart"),
        pytest.param([rec(0, 0, 2), rec(1, 1, 3), rec(0, 1.5, 4)], 3, id="overlapping"),
        pytest.param([rec(0, 0, 1), rec(1, 1, 2)], 1, id="one-ends-as-the-next-starts"),
        pytest.param([rec(0, 0, None), rec(1, 5, 6)], 2, id="still-in-flight"),
    ],
)
def test_peak_concurrency(records: list[Record], peak: int) -> None:
    assert peak_concurrency(records) == peak


def test_peak_concurrency_within_a_window() -> None:
    records = [rec(0, 0, 1), rec(1, 0.5, 1), rec(0, 5, 7), rec(1, 6, 8)]
    assert peak_concurrency(records, since=2) == 2
    assert peak_concurrency(records, until=2) == 2
    assert peak_concurrency(records, since=1.5, until=4) == 0


def test_the_second_replica_to_open_and_the_calls_it_spent() -> None:
    # The provider fails from t=10; replica 1 (index 0) opens at 11 on its own
    # calls, replica 2 follows at 11.2 having sent 3 calls since 10, 1 after 11.
    sent = [rec(1, t, t + 0.01) for t in (5.0, 10.1, 10.5, 11.1, 12.0)]
    openings = [Opening(0, 2.0, "local"), Opening(0, 11.0, "local"), Opening(1, 11.2, "shared")]
    assert followed(openings, sent, since=10) == {
        "first": {"replica": 1, "cause": "local"},
        "second": {
            "replica": 2,
            "cause": "shared",
            "opened_after_first_s": 0.2,
            "calls_before_open": 3,
            "calls_after_first_opened": 1,
        },
    }
    # Replica 2 never opened (its own calls kept it closed): every call it sent counts.
    assert followed(openings[:2], sent, since=10) == {
        "first": {"replica": 1, "cause": "local"},
        "second": {
            "replica": 2,
            "cause": None,
            "opened_after_first_s": None,
            "calls_before_open": 4,
            "calls_after_first_opened": 2,
        },
    }
    # No replica opened after the trouble began.
    assert followed(openings[:1], sent, since=10) is None


def test_round_robin_takes_each_replica_in_turn() -> None:
    spread = RoundRobin(["http://a", "http://b"])
    assert [spread() for _ in range(5)] == [
        "http://a",
        "http://b",
        "http://a",
        "http://b",
        "http://a",
    ]
    with pytest.raises(ValueError, match="at least one"):
        RoundRobin([])


# -- Redis ------------------------------------------------------------------------------------


def test_without_a_url_or_a_redis_server_the_error_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replicas, "find_redis_server", lambda: None)
    with pytest.raises(ReplicasError, match=r"pass --redis redis://HOST:6379/0, or install"):
        redis_for(None)


def test_a_url_where_no_redis_answers_is_an_error() -> None:
    port = FaultyUpstream.refused_port()
    with pytest.raises(ReplicasError, match=f"no Redis answers at 127.0.0.1:{port}"):
        redis_for(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(ReplicasError, match="must be a redis:// URL"):
        redis_for("http://127.0.0.1:6379")


def test_the_embedded_server_answers_and_a_given_url_is_used_as_is(redis_url: str) -> None:
    assert redis_url.startswith("redis://127.0.0.1:")
    assert redis_for(redis_url) == (redis_url, None)


def test_the_embedded_server_writes_nothing_and_goes_away() -> None:
    binary = replicas.find_redis_server()
    if binary is None:
        pytest.skip("redis-server is not installed")
    server = EmbeddedRedis(binary).start()
    workdir = server.workdir.name
    proc = server.proc
    assert proc is not None
    args = proc.args
    assert isinstance(args, list)
    assert args[args.index("--save") + 1] == ""
    assert args[args.index("--appendonly") + 1] == "no"
    server.stop()
    assert proc.poll() is not None
    assert not os.path.exists(workdir)


# -- the replicas' registry, through the meter ------------------------------------------------


def local_registry(upstream: str) -> seawall.Registry:
    """A registry like the demo shop's: payments with a breaker, a local bulkhead, no retry."""
    registry = seawall.Registry()
    registry.add(
        "payments",
        base_url=upstream,
        policy=seawall.Policy(
            timeouts=seawall.Timeouts(attempt=5.0, total=5.0),
            retry=None,
            bulkhead=seawall.Bulkhead(max_concurrent=100),
            breaker=seawall.CircuitBreaker(minimum_calls=10, window_size=20, open_duration=30),
        ),
    )
    registry.add("catalog", base_url=upstream, headers={"x-shop": "demo"})
    return registry


def test_the_shared_registry_keeps_every_local_setting_and_adds_the_shared_part() -> None:
    from seawall.redis import RedisState

    local = local_registry("http://127.0.0.1:1")
    state = RedisState(url="redis://127.0.0.1:1/0")
    fleet = shared_registry(local, state)
    assert fleet.state is state
    assert fleet.names == local.names
    payments = fleet.spec("payments")
    assert payments.policy.shared == replicas.SHARED["payments"]
    assert payments.policy.shared.bulkhead == seawall.GlobalBulkhead(max_concurrent=GLOBAL_CAP)
    assert payments.policy.bulkhead == local.spec("payments").policy.bulkhead
    assert payments.base_url == "http://127.0.0.1:1"
    catalog = fleet.spec("catalog")
    assert catalog.policy.shared is None
    assert dict(catalog.httpx_options) == {"headers": {"x-shop": "demo"}}


@pytest.fixture
def meter(upstream: FaultyUpstream) -> Iterator[MeterChild]:
    process = MeterChild(upstream.url, 2)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def upstream() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as server:
        yield server


@pytest.fixture
async def fleet(
    redis_url: str, meter: MeterChild
) -> AsyncIterator[tuple[seawall.Registry, seawall.Registry]]:
    """Two replicas of the shop on one Redis, each calling the provider through its own
    port of the meter, syncing every 50 ms."""
    from seawall.redis import RedisState

    namespace = replicas.new_namespace()
    registries = [
        shared_registry(
            local_registry(url),
            RedisState(url=redis_url, namespace=namespace, sync_interval=0.05, budget=0.25),
        )
        for url in meter.urls
    ]
    async with AsyncExitStack() as stack:
        for registry in registries:
            await stack.enter_async_context(registry)
        yield registries[0], registries[1]


async def until(predicate: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_the_meter_counts_each_replicas_payments_requests_and_their_concurrency(
    meter: MeterChild, upstream: FaultyUpstream
) -> None:
    upstream.route("/charges", Fault.latency(0.2))
    upstream.route("/items", Fault.ok())
    clients = [httpx.AsyncClient(base_url=url) for url in meter.urls]
    async with clients[0], clients[1], anyio.create_task_group() as tg:
        for client in (*clients, *clients, clients[0]):
            tg.start_soon(client.post, "/charges")
        tg.start_soon(clients[1].get, "/charges/order-1")
        tg.start_soon(clients[1].get, "/items")  # the catalog: not a payments request
        tg.start_soon(clients[1].post, "/charges/order-1/cancel")  # a refund: neither
    stats = meter.stats()
    records = records_of(stats)
    assert len(records) == 6
    assert sorted(r.replica for r in records) == [0, 0, 0, 1, 1, 1]
    assert {r.status for r in records} == {"200"}
    # Five charges held 0.2 s by the provider; the status check answered at once.
    held = sorted(r.end - r.start for r in records if r.end is not None)
    assert len(held) == 6
    assert held[0] < 0.19 <= held[1]
    # The five charges at once; the status check may overlap them.
    assert 5 <= peak_concurrency(records) <= 6
    assert stats["peak"] == peak_concurrency(records)


@pytest.mark.anyio
async def test_a_request_given_up_on_ends_when_the_client_closes(
    meter: MeterChild, upstream: FaultyUpstream
) -> None:
    upstream.route("/charges", Fault.hang())
    async with httpx.AsyncClient(base_url=meter.urls[0], timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/charges")
    await until(lambda: records_of(meter.stats())[0].end is not None)
    (record,) = records_of(meter.stats())
    assert record.status == "closed"


@pytest.mark.anyio
async def test_two_replicas_hold_the_global_cap_and_the_second_follows_the_first_breaker(
    fleet: tuple[seawall.Registry, seawall.Registry],
    meter: MeterChild,
    upstream: FaultyUpstream,
) -> None:
    a, b = fleet
    # 30 charges on each replica, the provider taking 0.5 s: 60 against the cap.
    upstream.route("/charges", Fault.latency(0.5))
    outcomes: list[str] = []

    async def charge(registry: seawall.Registry) -> None:
        try:
            await registry.client("payments").post("/charges")
            outcomes.append("ok")
        except seawall.BulkheadFullError:
            outcomes.append("bulkhead_full")

    async with anyio.create_task_group() as tg:
        for _ in range(30):
            tg.start_soon(charge, a)
            tg.start_soon(charge, b)
    records = records_of(meter.stats())
    local = sum(r.snapshot()["state"]["local_decisions"].get("bulkhead", 0) for r in fleet)
    peak = peak_concurrency(records)
    print(f"peak {peak} (cap {GLOBAL_CAP}), local decisions {local}, {outcomes.count('ok')} ok")
    assert peak <= GLOBAL_CAP + local
    assert outcomes.count("ok") == len(records)
    assert outcomes.count("bulkhead_full") >= 60 - GLOBAL_CAP - local

    # The provider fails: a's calls open its breaker; b follows without its own evidence.
    upstream.route("/charges", Fault.error(503))
    since = time.monotonic()
    for _ in range(20):  # minimum_calls, at most window_size
        await a.client("payments").post("/charges")
        if a.breaker("payments").state.value == "open":
            break
    assert a.breaker("payments").state.value == "open"
    opened_a = time.monotonic()
    await until(lambda: b.breaker("payments").state.value == "open")
    opened_b = time.monotonic()
    openings = [
        Opening(0, opened_a, a.breaker("payments").cause),
        Opening(1, opened_b, b.breaker("payments").cause),
    ]
    summary = followed(openings, records_of(meter.stats()), since)
    assert summary is not None
    assert summary["first"] == {"replica": 1, "cause": "local"}
    assert summary["second"]["cause"] == "shared"
    assert summary["second"]["calls_before_open"] == 0
    assert summary["second"]["calls_after_first_opened"] == 0


# -- the runner's side --------------------------------------------------------------------------


def test_the_replicas_stats_read_as_one_shops() -> None:
    one = {
        "dependencies": {
            "payments": {
                "outcomes": {"success": 3, "timeout": 1},
                "retries": 1,
                "fallbacks": 0,
                "breaker": "open",
                "bulkhead_in_use": 2,
                "bulkhead_limit": 20,
                "bulkhead_min_rtt_ms": 4.0,
            }
        },
        "orders": {"paid": 7},
        "verified": {"succeeded": 1},
    }
    two = {
        "dependencies": {
            "payments": {
                "outcomes": {"success": 2, "circuit_open": 5},
                "retries": 0,
                "fallbacks": 0,
                "breaker": "closed",
                "bulkhead_in_use": 1,
                "bulkhead_limit": 20,
                "bulkhead_min_rtt_ms": None,
            }
        },
        "orders": {"paid": 7},  # one database for both replicas
        "verified": {"succeeded": 2, "not_applied": 1},
    }
    merged = replicas.merge_stats([one, two])
    assert merged == {
        "dependencies": {
            "payments": {
                "outcomes": {"success": 5, "timeout": 1, "circuit_open": 5},
                "retries": 1,
                "fallbacks": 0,
                "breaker": "open/closed",
                "bulkhead_in_use": 3,
                "bulkhead_limit": 40,
                "bulkhead_min_rtt_ms": 4.0,
            }
        },
        "orders": {"paid": 7},
        "verified": {"succeeded": 3, "not_applied": 1},
    }
    assert replicas.merge_stats([one, one])["dependencies"]["payments"]["breaker"] == "open"
    assert replicas.merge_stats([{}, {}]) == {}


def test_the_providers_trouble_begins_with_the_first_phase_that_is_not_ok() -> None:
    phases = [("healthy", 0.0, 2.0), ("slow", 2.0, 5.0), ("recovered", 5.0, 8.0)]
    assert replicas.failing_since(phases, ["ok", "latency 10", "ok"]) == 2.0
    assert replicas.failing_since(phases, ["ok", "ok", "ok"]) is None


def test_a_fleet_needs_two_replicas() -> None:
    with pytest.raises(ReplicasError, match="at least 2, got 1"):
        replicas.Fleet(1)


@pytest.mark.anyio
async def test_a_fleets_summary_reads_the_meters_and_the_breakers_it_watched(
    redis_url: str, upstream: FaultyUpstream
) -> None:
    fleet = replicas.Fleet(2, redis_url)
    try:
        assert fleet.start_redis() == redis_url
        assert fleet.redis == "given"
        assert fleet.env() == {
            "SEAWALL_DEMO_REDIS": redis_url,
            "SEAWALL_DEMO_NAMESPACE": fleet.namespace,
        }
        started = time.monotonic()
        urls = fleet.meter("seawall", upstream.url)
        upstream.route("/charges", Fault.latency(0.1))
        async with httpx.AsyncClient() as client:
            async with anyio.create_task_group() as tg:
                for url in (*urls, urls[0]):
                    tg.start_soon(client.post, url + "/charges")
            # Nothing serves /_resilience/ here: the watch sees no opening.
            await fleet.watch(client, urls, end=time.monotonic() + 0.05)
        summary = fleet.summary(started, since=0.0)
    finally:
        fleet.stop()
    assert summary == {
        "count": 2,
        "redis": "given",
        "global_cap": GLOBAL_CAP,
        "provider_peak_concurrency": {"seawall": 3},
        "payments_requests_by_replica": {"seawall": [2, 1]},
        "breaker_followed": None,
        "local_decisions": {},
    }


# -- the demo itself ----------------------------------------------------------------------------


@pytest.mark.slow  # the demo run takes ~25 s
def test_a_demo_with_two_replicas_of_each_shop_reports_the_provider_and_the_breakers(
    redis_url: str,
) -> None:
    # redis_url only makes sure a redis-server is there: the demo starts its own.
    result = subprocess.run(
        [
            *DEMO,
            *("--replicas", "2", "--duration", "10", "--scenario", "hang"),
            *("--pay-clients", "30", "--think", "0.5", "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    fleet = summary["replicas"]
    print(json.dumps(fleet))
    assert fleet["count"] == 2
    assert fleet["redis"] == "embedded"
    assert fleet["global_cap"] == GLOBAL_CAP
    peaks = fleet["provider_peak_concurrency"]
    assert set(peaks) == {"plain", "seawall"}
    # The cap holds across both seawall replicas (but for calls admitted on local
    # state, counted); the plain replicas' hung charges pile up at the provider.
    assert 0 < peaks["seawall"] <= GLOBAL_CAP + fleet["local_decisions"].get("bulkhead", 0)
    assert peaks["plain"] > 0
    # Both replicas of each shop took traffic (the round robin).
    for calls in fleet["payments_requests_by_replica"].values():
        assert len(calls) == 2
        assert min(calls) > 0
    # The hung provider opened both seawall replicas' breakers, one after the other.
    # The hung provider opened a seawall replica's breaker on its own calls; the
    # other followed it, opened on its own calls too, or stayed closed on its own
    # healthy ones (status checks answer at once): each case has its figures.
    follow = fleet["breaker_followed"]
    assert follow is not None
    assert follow["first"]["cause"] == "local"
    second = follow["second"]
    assert {follow["first"]["replica"], second["replica"]} == {1, 2}
    assert second["cause"] in ("local", "shared", None)
    if second["cause"] is None:
        assert second["opened_after_first_s"] is None
    else:
        assert second["opened_after_first_s"] >= 0
    assert 0 <= second["calls_after_first_opened"] <= second["calls_before_open"]
    # The seawall shop's ledger holds with two dispatchers on one database.
    assert summary["comparison"]["ledger"]["seawall"] == {"charged_twice": 0, "lost": 0}


@pytest.mark.parametrize(
    ("second", "line"),
    [
        pytest.param(
            {"replica": 2, "cause": "shared", "opened_after_first_s": 0.1},
            "replica 2 followed the first one's verdict 0.10 s later, having sent 9",
            id="followed",
        ),
        pytest.param(
            {"replica": 2, "cause": "local", "opened_after_first_s": 0.25},
            "replica 2 opened on its own calls 0.25 s later, having sent 9",
            id="on-its-own",
        ),
        pytest.param(
            {"replica": 2, "cause": None, "opened_after_first_s": None},
            "replica 2 stayed closed, its own calls healthy enough (it sent 9",
            id="stayed-closed",
        ),
    ],
)
def test_the_terminal_summary_says_how_the_second_breaker_opened(
    second: dict[str, Any], line: str
) -> None:
    from rich.console import Console

    from seawall._demo.runner import Demo

    console = Console(record=True, width=500)
    figures = {
        "count": 2,
        "redis": "embedded",
        "global_cap": GLOBAL_CAP,
        "provider_peak_concurrency": {"plain": 30, "seawall": GLOBAL_CAP},
        "breaker_followed": {
            "first": {"replica": 1, "cause": "local"},
            "second": second | {"calls_before_open": 9, "calls_after_first_opened": 0},
        },
    }
    Demo._print_replicas(console, figures)
    text = console.export_text()
    assert (
        f"the provider held at most 30 payments requests at once from the plain shop's, "
        f"{GLOBAL_CAP} from seawall's (global cap {GLOBAL_CAP})" in text
    )
    assert "replica 1 opened first; " + line in text
    Demo._print_replicas(console, figures | {"breaker_followed": None})
    assert "no replica's opened" in console.export_text()
