"""Configuration of shared state: the objects, the TOML tables, the errors, asyncio only."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from shared_helpers import Cluster, shared_policy
from shared_redis_server import RedisServer

import seawall
import seawall.telemetry
from seawall._shared import AdvisoryBreaker, SharedBulkhead, SharedRateLimiter
from seawall.redis import RedisState
from seawall.testing import ManualClock


def problems(error: pytest.ExceptionInfo[seawall.ConfigError]) -> list[str]:
    return list(error.value.problems)


@pytest.mark.parametrize(
    ("build", "line"),
    [
        pytest.param(
            lambda: seawall.GlobalBulkhead(max_concurrent=0),
            "GlobalBulkhead.max_concurrent: must be >= 1, got 0",
            id="cap",
        ),
        pytest.param(
            lambda: seawall.GlobalBulkhead(max_concurrent=4, grant_step=5),
            "GlobalBulkhead.grant_step: must be <= max_concurrent (4), got 5",
            id="step",
        ),
        pytest.param(
            lambda: seawall.GlobalBulkhead(max_concurrent=4, on_unavailable="wait"),
            "GlobalBulkhead.on_unavailable: must be 'local_share' or 'reject', got 'wait'",
            id="on_unavailable",
        ),
        pytest.param(
            lambda: seawall.SharedRateLimit(reserve_ttl=-1),
            "SharedRateLimit.reserve_ttl: must be >= 0, got -1",
            id="ttl",
        ),
        pytest.param(
            lambda: seawall.Shared(breaker="always"),
            "Shared.breaker: must be 'off' or 'advisory', got 'always'",
            id="breaker",
        ),
        pytest.param(
            lambda: seawall.Shared(quorum_ratio=0),
            "Shared.quorum_ratio: must be in (0, 1], got 0",
            id="ratio",
        ),
        pytest.param(
            lambda: seawall.Policy(breaker=None, shared=seawall.Shared(breaker="advisory")),
            "Policy.shared.breaker: needs a breaker in the policy, got 'advisory'",
            id="advisory-without-breaker",
        ),
        pytest.param(
            lambda: seawall.Policy(shared=seawall.Shared(rate_limit=True)),
            "Policy.shared.rate_limit: needs a rate_limit in the policy, got True",
            id="rate-without-limit",
        ),
    ],
)
def test_bad_values_name_their_key_and_value(build: Any, line: str) -> None:
    with pytest.raises(seawall.ConfigError) as caught:
        build()
    assert line in problems(caught)


def test_defaults_are_derived() -> None:
    assert seawall.GlobalBulkhead(max_concurrent=40).grant_step == 2
    assert seawall.GlobalBulkhead(max_concurrent=8).grant_step == 1
    assert seawall.Shared(rate_limit=True).rate_limit == seawall.SharedRateLimit()
    assert seawall.Shared(rate_limit=False).rate_limit is None


def test_a_file_with_bad_state_and_shared_tables_reports_every_problem() -> None:
    with pytest.raises(seawall.ConfigError) as caught:
        seawall.Config.from_mapping(
            {
                "state": {
                    "backend": "memcached",
                    "budget_ms": 5000,
                    "sync_interval_ms": 100,
                    "lease_ttl_ms": 150,
                    "password": "hunter2",
                },
                "dependencies": {
                    "pay": {
                        "shared": {
                            "breaker": "advisory",
                            "bulkhead": {"max_concurrent": 0},
                            "rate_limit": True,
                        }
                    }
                },
            }
        )
    assert problems(caught) == [
        "dependencies.pay.shared.bulkhead.max_concurrent: must be >= 1, got 0",
        "state.password: unknown key, got [secret]",
        "state.backend: must be 'redis', got 'memcached'",
        "state.budget_ms: must be <= 1_000, got 5000",
        "state.lease_ttl_ms: must be at least twice sync_interval_ms, got 150",
    ]


def test_shared_without_a_state_backend_is_an_error_with_its_key_path() -> None:
    config = {"dependencies": {"pay": {"shared": {"breaker": "advisory"}}}}
    with pytest.raises(seawall.ConfigError) as caught:
        seawall.Registry.from_config(config)
    assert problems(caught)[0].startswith("dependencies.pay.shared: needs a state backend")
    with pytest.raises(seawall.ConfigError, match=r"dependencies\.pay\.shared: needs a state"):
        seawall.Registry().guard("pay", shared_policy(shared=seawall.Shared(breaker="advisory")))


def test_redis_state_checks_its_arguments_and_never_shows_a_password() -> None:
    with pytest.raises(seawall.ConfigError) as caught:
        RedisState(
            "http://user:hunter2@cache:6379",
            namespace="a{b}",
            budget=0,
            lease_ttl=0.1,
            cache_secret="short",
            time="wall",  # type: ignore[arg-type]
        )
    text = "\n".join(problems(caught))
    assert "hunter2" not in text
    assert "RedisState.url: must be a redis://, rediss:// or unix:// URL" in text
    assert "RedisState.namespace:" in text
    assert "RedisState.budget: must be > 0, got 0" in text
    assert "RedisState.lease_ttl: must be at least twice sync_interval, got 0.1" in text
    assert (
        "RedisState.cache_secret: must be a string of at least 16 characters, got '[secret]'"
        in text
    )
    assert "RedisState.time: must be 'server' or 'client', got 'wall'" in text
    with pytest.raises(seawall.ConfigError, match="give one of url, url_env or client"):
        RedisState()
    state = RedisState("redis://user:hunter2@cache:6379/0")
    assert "hunter2" not in repr(state)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_under_trio_entering_the_registry_says_asyncio_only() -> None:
    registry = seawall.Registry(state=RedisState("redis://127.0.0.1:1/0"))
    with pytest.raises(RuntimeError, match=r"asyncio only.*entered under trio"):
        async with registry:
            pass


def test_an_advisory_breaker_with_endpoints_is_one_per_endpoint() -> None:
    registry = seawall.Registry(state=RedisState("redis://127.0.0.1:1/0"))
    registry.add(
        "pay",
        endpoints=["https://a.example", "https://b.example"],
        policy=shared_policy(shared=seawall.Shared(breaker="advisory")),
    )
    breakers = registry.breakers("pay")
    assert sorted(breakers) == ["https://a.example", "https://b.example"]
    assert all(isinstance(b, AdvisoryBreaker) for b in breakers.values())
    assert len({b.sync_key for b in breakers.values()}) == 2  # type: ignore[attr-defined]
    config: dict[str, Any] = {
        "dependencies": {
            "pay": {"endpoints": ["https://a.example"], "shared": {"breaker": "advisory"}}
        }
    }
    from_file = seawall.Registry.from_config(config, state=RedisState("redis://127.0.0.1:1/0"))
    assert isinstance(from_file.breakers("pay")["https://a.example"], AdvisoryBreaker)


@pytest.mark.anyio
async def test_a_toml_file_with_state_and_shared_tables(
    tmp_path: Path, redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEAWALL_TEST_REDIS", redis_server.url)
    path = tmp_path / "resilience.toml"
    path.write_text(
        f"""
[state]
backend = "redis"
url_env = "SEAWALL_TEST_REDIS"
namespace = "{namespace}"
budget_ms = 50
sync_interval_ms = 100
lease_ttl_ms = 2000

[dependencies.pay]
base_url = "https://pay.example"
rate_limit = {{ rate = 50, burst = 10 }}
bulkhead = {{ max_concurrent = 10 }}

[dependencies.pay.shared]
breaker = "advisory"
quorum = 3
bulkhead = {{ max_concurrent = 40, grant_step = 4 }}
rate_limit = {{ reserve = 5 }}
"""
    )
    registry = seawall.Registry.from_toml(path)
    state = registry.state
    assert isinstance(state, RedisState)
    assert (state.budget, state.sync_interval, state.lease_ttl) == (0.05, 0.1, 2.0)
    rt = registry.client("pay").resilient_transport.rt
    assert isinstance(rt.breaker, AdvisoryBreaker)
    assert rt.breaker.shared.quorum == 3
    assert isinstance(rt.bulkhead, SharedBulkhead)
    assert isinstance(rt.limiter, SharedRateLimiter)
    async with registry:
        assert state.status == "connected"
        snapshot = registry.snapshot()
        assert snapshot["state"]["status"] == "connected"
        assert snapshot["dependencies"]["pay"]["shared"]["bulkhead"]["max_concurrent"] == 40
    assert state.status == "stopped"


@pytest.mark.anyio
async def test_an_unset_url_env_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEAWALL_NO_SUCH_URL", raising=False)
    registry = seawall.Registry(state=RedisState(url_env="SEAWALL_NO_SUCH_URL"))
    with pytest.raises(seawall.ConfigError, match="SEAWALL_NO_SUCH_URL"):
        async with registry:
            pass


@pytest.mark.anyio
async def test_reload_keeps_shared_parts_whose_settings_did_not_change(
    cluster: Cluster,
) -> None:
    def config(cap: int) -> dict[str, Any]:
        return {
            "dependencies": {
                "pay": {
                    "breaker": {"minimum_calls": 4, "window_size": 10},
                    "shared": {"breaker": "advisory", "bulkhead": {"max_concurrent": cap}},
                }
            }
        }

    state = cluster.state()
    registry = seawall.Registry.from_config(config(10), clock=cluster.clock, state=state)
    await cluster.stack.enter_async_context(registry)
    rt = registry._get("pay").runtime
    breaker, bulkhead = rt.breaker, rt.bulkhead
    registry.reload(config(20))
    assert rt.breaker is breaker
    assert rt.bulkhead is not bulkhead
    assert rt.bulkhead.global_config.max_concurrent == 20  # type: ignore[union-attr]
    assert await state.sync()


@pytest.fixture
def meter_reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    previous = seawall.telemetry.configure(meter_provider=provider)
    yield reader
    seawall.telemetry.configure(
        **{f.name: getattr(previous, f.name) for f in dataclasses.fields(previous)}
    )
    provider.shutdown()


@pytest.mark.anyio
async def test_telemetry_metrics_and_snapshot(
    cluster: Cluster, meter_reader: InMemoryMetricReader, clock: ManualClock
) -> None:
    shared = seawall.Shared(
        breaker="advisory", bulkhead=seawall.GlobalBulkhead(max_concurrent=4, grant_step=2)
    )
    (a,) = await cluster.add(shared_policy(shared=shared))
    await a.succeed(1)
    await a.sync()
    data = meter_reader.get_metrics_data()
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    round_trips = {p.attributes["op"]: p.value for p in points["seawall.shared.round_trips"]}
    assert round_trips["grant"] == 1
    assert round_trips["sync"] >= 1
    assert [p.value for p in points["seawall.shared.state"]] == [0]
    assert points["seawall.shared.sync.duration"][0].count >= 1
    snapshot = a.registry.snapshot()
    state = snapshot["state"]
    assert (state["backend"], state["status"], state["replica"]) == (
        "redis",
        "connected",
        a.state.replica,
    )
    assert state["last_sync_age"] == 0.0
    clock.advance(1.5)
    assert a.registry.snapshot()["state"]["last_sync_age"] == 1.5
    shared_entry = snapshot["dependencies"]["pay"]["shared"]
    assert shared_entry["verdict"] == "closed"
    assert shared_entry["override"] is None
    assert shared_entry["bulkhead"]["held"] == 2


def gauges(reader: InMemoryMetricReader, name: str) -> dict[tuple[Any, ...], Any]:
    """*name*'s points, by their attributes' values (sorted by key)."""
    found: dict[tuple[Any, ...], Any] = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for p in metric.data.data_points:
                        found[tuple(v for _, v in sorted(p.attributes.items()))] = p.value
    return found


@pytest.mark.anyio
async def test_gauges_of_the_verdict_the_replicas_and_the_slots(
    cluster: Cluster, meter_reader: InMemoryMetricReader
) -> None:
    """What this replica saw at its last sync, per dependency, as OpenTelemetry gauges."""
    shared = seawall.Shared(
        breaker="advisory", bulkhead=seawall.GlobalBulkhead(max_concurrent=8, grant_step=2)
    )
    a, b, quiet = await cluster.add(shared_policy(shared=shared), 3)
    await a.fail(4)
    await b.fail(4)
    await quiet.succeed(1)  # holds a grant of 2
    await cluster.sync_all()
    await cluster.sync_all()
    assert gauges(meter_reader, "seawall.shared.verdict") == {("pay",): 1}
    replicas = gauges(meter_reader, "seawall.shared.replicas")
    assert replicas == {("pay", "live"): 3, ("pay", "tripped"): 2, ("pay", "evidence"): 2}
    slots = gauges(meter_reader, "seawall.shared.bulkhead.slots")
    assert slots[("pay", "limit")] == 8
    assert slots[("pay", "cluster")] == a.bulkhead.held + b.bulkhead.held + quiet.bulkhead.held


@pytest.mark.anyio
async def test_no_log_event_while_all_is_well(cluster: Cluster) -> None:
    with structlog.testing.capture_logs() as logs:
        (a,) = await cluster.add(shared_policy(shared=seawall.Shared(breaker="advisory")))
        await a.sync()
        with contextlib.suppress(Exception):
            await a.succeed(1)
    assert [e for e in logs if str(e["event"]).startswith("seawall.shared")] == []


def test_reload_refuses_a_shared_part_without_a_state_backend_before_changing_anything() -> None:
    registry = seawall.Registry.from_config({"dependencies": {"pay": {}}})
    before = registry._get("pay").runtime.policy
    with pytest.raises(seawall.ConfigError, match=r"dependencies\.pay\.shared: needs a state"):
        registry.reload({"dependencies": {"pay": {"shared": {"breaker": "advisory"}}, "new": {}}})
    assert registry.names == ["pay"]
    assert registry._get("pay").runtime.policy is before


@pytest.mark.parametrize(
    ("before", "after", "said"),
    [
        pytest.param(
            {"backend": "redis", "namespace": "a", "budget_ms": 10},
            {"backend": "redis", "namespace": "b", "budget_ms": 20},
            "namespace 'a' -> 'b', budget 0.01 -> 0.02",
            id="changed",
        ),
        pytest.param({"backend": "redis"}, None, "the [state] table was removed", id="removed"),
        pytest.param(None, {"backend": "redis"}, "a [state] table was added", id="added"),
    ],
)
def test_reload_refuses_a_changed_state_table_before_changing_anything(
    before: dict[str, Any] | None, after: dict[str, Any] | None, said: str
) -> None:
    def config(state: dict[str, Any] | None, cap: int) -> dict[str, Any]:
        table: dict[str, Any] = {"dependencies": {"pay": {"bulkhead": {"max_concurrent": cap}}}}
        if state is not None:
            table["state"] = state
        return table

    registry = seawall.Registry.from_config(config(before, 10))
    runtime = registry._get("pay").runtime
    policy = runtime.policy
    with pytest.raises(seawall.ConfigError) as caught:
        registry.reload(config(after, 20))
    assert problems(caught) == [
        "state: cannot change on reload (the state backend is built with the registry and "
        f"never swapped under calls in flight; restart to apply it): {said}"
    ]
    assert runtime.policy is policy  # nothing changed
    registry.reload(config(before, 20))  # the same table: reloaded
    assert runtime.policy.bulkhead == seawall.Bulkhead(max_concurrent=20)
