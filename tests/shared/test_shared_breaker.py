"""The advisory breaker on a real Redis: quorum, local evidence wins, no flapping, overrides.

Replicas are registries in one process sharing a ManualClock (see conftest);
each sync is explicit, so every step is deterministic.
"""

from __future__ import annotations

import httpx
import pytest
import structlog
from shared_helpers import Cluster, shared_policy
from shared_redis_server import RedisServer

import seawall
from seawall._shared import AdvisoryBreaker
from seawall._shared._breaker import endpoint_key
from seawall._shared._lua import AGGREGATE

pytestmark = pytest.mark.anyio

ADVISORY = seawall.Shared(breaker="advisory")


async def test_two_tripped_replicas_open_a_quiet_one_which_then_sends_nothing(
    cluster: Cluster,
) -> None:
    a, b, c = await cluster.add(shared_policy(shared=ADVISORY), 3)
    assert isinstance(c.breaker, AdvisoryBreaker)
    await a.fail(4)
    await b.fail(4)
    assert a.breaker.state is b.breaker.state is seawall.BreakerState.OPEN
    await cluster.sync_all()  # a, b report; c hears two tripped replicas of three
    assert c.breaker.state is seawall.BreakerState.OPEN
    assert c.breaker.cause == "shared"
    calls = 0

    async def upstream() -> None:
        nonlocal calls
        calls += 1

    with pytest.raises(seawall.CircuitOpenError):
        await c.guard.call(upstream)
    assert calls == 0
    shared = c.registry.snapshot()["dependencies"]["pay"]["shared"]
    assert shared["verdict"] == "open"
    assert (shared["live_replicas"], shared["tripped_replicas"]) == (3, 2)
    assert shared["cause"] == "shared"


async def test_one_tripped_replica_is_no_quorum(cluster: Cluster) -> None:
    a, _, c = await cluster.add(shared_policy(shared=ADVISORY), 3)
    await a.fail(4)
    await cluster.sync_all()
    await c.sync()
    assert c.breaker.state is seawall.BreakerState.CLOSED
    assert c.registry.snapshot()["dependencies"]["pay"]["shared"]["verdict"] == "closed"


async def test_the_tripped_must_be_a_share_of_the_replicas_with_evidence(cluster: Cluster) -> None:
    strict = seawall.Shared(breaker="advisory", quorum_ratio=0.75)
    a, b, c, d, quiet = await cluster.add(shared_policy(shared=strict), 5)
    await a.fail(4)
    await b.fail(4)
    await c.succeed(4)
    await d.succeed(4)
    await cluster.sync_all()
    await quiet.sync()
    # 2 tripped of 4 with evidence: 0.5 < 0.75.
    assert quiet.breaker.state is seawall.BreakerState.CLOSED
    await c.fail(4)  # over its threshold too (4 failures of 8)
    await c.sync()
    await quiet.sync()
    assert quiet.breaker.state is seawall.BreakerState.OPEN  # 3 of 4


async def test_local_evidence_wins_over_an_open_verdict(cluster: Cluster) -> None:
    a, b, healthy, shaky = await cluster.add(shared_policy(shared=ADVISORY), 4)
    await a.fail(4)
    await b.fail(4)
    await healthy.succeed(4)  # minimum_calls healthy calls of its own
    await shaky.succeed(3)
    await shaky.fail(1)  # 25 % failures: >= assist_ratio (0.5) x threshold (0.5)
    await cluster.sync_all()
    await healthy.sync()
    await shaky.sync()
    assert healthy.breaker.state is seawall.BreakerState.CLOSED
    await healthy.succeed(1)  # it keeps calling
    assert shaky.breaker.state is seawall.BreakerState.OPEN
    assert shaky.breaker.cause == "shared"


async def test_a_follower_counts_for_nothing_so_the_verdict_ends_with_its_cause(
    cluster: Cluster, clock: seawall.testing.ManualClock
) -> None:
    a, b, c = await cluster.add(shared_policy(shared=ADVISORY), 3)
    await a.fail(4)
    await b.fail(4)
    await cluster.sync_all()
    assert c.breaker.state is seawall.BreakerState.OPEN
    assert c.breaker.evidence() == (0, 0)  # following is not evidence
    clock.advance(31)  # a and b half-open; their probes pass
    await a.succeed(5)
    await b.succeed(5)
    await cluster.sync_all()
    view = c.state.view("pay")
    assert (view.tripped, view.evidence) == (0, 0)
    assert not c.breaker.verdict()


async def test_after_its_probes_pass_a_replica_ignores_the_verdict_until_it_has_evidence(
    cluster: Cluster, clock: seawall.testing.ManualClock
) -> None:
    a, b, c = await cluster.add(shared_policy(shared=ADVISORY), 3)
    await a.fail(4)
    await b.fail(4)
    await cluster.sync_all()
    assert c.breaker.cause == "shared"
    clock.advance(31)  # every breaker half-open; only c's path works
    await c.succeed(5)
    assert c.breaker.state is seawall.BreakerState.CLOSED
    await a.fail(5)  # a, b probe and open again: the verdict stays open
    await b.fail(5)
    await cluster.sync_all()
    assert c.breaker.verdict()
    assert c.breaker.state is seawall.BreakerState.CLOSED  # no flapping
    await c.succeed(4)
    await c.sync()
    assert c.breaker.state is seawall.BreakerState.CLOSED  # its own evidence is healthy
    await c.fail(2)  # 2 of 6 failed: over assist_ratio x threshold, and the verdict is open
    await c.sync()
    assert c.breaker.state is seawall.BreakerState.OPEN
    assert c.breaker.cause == "shared"


async def test_adopting_the_verdict_is_a_transition_with_reason_shared(cluster: Cluster) -> None:
    a, b, c = await cluster.add(shared_policy(shared=ADVISORY), 3)
    seen: list[seawall.Transition] = []
    c.breaker.on_transition(seen.append)
    await a.fail(4)
    await b.fail(4)
    with structlog.testing.capture_logs() as logs:
        await cluster.sync_all()
    assert [(t.from_state, t.to_state, t.reason) for t in seen] == [
        (seawall.BreakerState.CLOSED, seawall.BreakerState.OPEN, "shared")
    ]
    transitions = [e for e in logs if e["event"] == "seawall.breaker.transition"]
    assert [e["reason"] for e in transitions] == ["shared"]


async def test_force_open_across_the_cluster_then_reset(cluster: Cluster) -> None:
    a, b = await cluster.add(shared_policy(shared=ADVISORY), 2)
    await cluster.sync_all()
    a.breaker.force_open(scope="cluster")
    assert a.breaker.state is seawall.BreakerState.FORCED_OPEN
    assert b.breaker.state is seawall.BreakerState.CLOSED
    await a.sync()
    await b.sync()
    assert b.breaker.state is seawall.BreakerState.FORCED_OPEN
    assert b.breaker.cause == "override"
    assert b.registry.snapshot()["dependencies"]["pay"]["shared"]["override"] == "forced_open"
    b.breaker.reset(scope="cluster")
    await b.sync()
    await a.sync()
    assert a.breaker.state is b.breaker.state is seawall.BreakerState.CLOSED
    await a.sync()
    await b.sync()
    assert a.breaker.state is b.breaker.state is seawall.BreakerState.CLOSED
    assert a.registry.snapshot()["dependencies"]["pay"]["shared"]["override"] is None


async def test_a_cluster_override_with_a_ttl_ends_everywhere(
    cluster: Cluster, clock: seawall.testing.ManualClock
) -> None:
    a, b = await cluster.add(shared_policy(shared=ADVISORY), 2)
    seen: list[seawall.Transition] = []
    b.breaker.on_transition(seen.append)
    a.breaker.disable(scope="cluster", ttl=5)
    await a.sync()
    await b.sync()
    assert b.breaker.state is seawall.BreakerState.DISABLED
    clock.advance(5.5)
    await a.sync()
    await b.sync()
    assert a.breaker.state is b.breaker.state is seawall.BreakerState.CLOSED
    assert [t.reason for t in seen] == ["disabled", "override_ended"]


async def test_a_replica_that_joins_later_applies_a_standing_override_not_an_old_reset(
    cluster: Cluster,
) -> None:
    (a,) = await cluster.add(shared_policy(shared=ADVISORY))
    a.breaker.reset(scope="cluster")
    await a.sync()
    (late,) = await cluster.add(shared_policy(shared=ADVISORY))
    seen: list[seawall.Transition] = []
    late.breaker.on_transition(seen.append)
    await late.sync()
    assert seen == []
    a.breaker.force_open(scope="cluster")
    await a.sync()
    (later,) = await cluster.add(shared_policy(shared=ADVISORY))
    assert later.breaker.state is seawall.BreakerState.FORCED_OPEN


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"scope": "everywhere"}, "scope: must be", id="scope"),
        pytest.param({"ttl": 5}, "ttl: must be", id="ttl-without-cluster"),
        pytest.param({"scope": "cluster", "ttl": -1}, "ttl: must be", id="negative-ttl"),
    ],
)
async def test_manual_control_checks_its_arguments(
    cluster: Cluster, kwargs: dict[str, object], message: str
) -> None:
    (a,) = await cluster.add(shared_policy(shared=ADVISORY))
    with pytest.raises(ValueError, match=message):
        a.breaker.force_open(**kwargs)
    assert a.breaker.state is seawall.BreakerState.CLOSED


# -- one advisory breaker per endpoint ---------------------------------------------------

PRIMARY = "https://user:hunter2@primary.example"
BACKUP = "https://backup.example"


async def endpoint_replicas(cluster: Cluster, n: int) -> tuple[list[seawall.Registry], list[str]]:
    """*n* replicas of a dependency with two endpoints and an advisory breaker; each
    replica's requests are logged by host."""
    registries, hosts = [], []

    def answer(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(200, text="ok")

    for _ in range(n):
        registry = seawall.Registry(clock=cluster.clock, state=cluster.state())
        registry.add(
            "pay",
            endpoints=[PRIMARY, BACKUP],
            transport=httpx.MockTransport(answer),
            policy=shared_policy(shared=ADVISORY),
        )
        await cluster.stack.enter_async_context(registry)
        registries.append(registry)
    return registries, hosts


def outcomes(breaker: seawall.Breaker, n: int, *, failed: bool) -> None:
    for _ in range(n):
        breaker.record(breaker.acquire(), 0.01, failed)


async def sync(*registries: seawall.Registry) -> None:
    for registry in registries:
        assert registry.state is not None
        assert await registry.state.sync()


async def test_each_endpoint_breaker_follows_the_verdict_on_its_own_endpoint(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    (a, b, c), hosts = await endpoint_replicas(cluster, 3)
    for replica in (a, b):
        breakers = replica.breakers("pay")
        assert all(isinstance(x, AdvisoryBreaker) for x in breakers.values())
        outcomes(breakers[PRIMARY], 4, failed=True)  # the primary fails for a and b
        outcomes(breakers[BACKUP], 4, failed=False)  # the backup works
    await sync(a, b, c)
    quiet = c.breakers("pay")
    assert quiet[PRIMARY].state is seawall.BreakerState.OPEN
    assert quiet[PRIMARY].cause == "shared"  # type: ignore[attr-defined]
    assert quiet[BACKUP].state is seawall.BreakerState.CLOSED
    response = await c.client("pay").get("/status")  # c skips the primary: no call spent
    assert seawall.report_of(response).endpoint == "https://backup.example:443"
    assert hosts == ["backup.example"]
    endpoints = c.snapshot()["dependencies"]["pay"]["shared"]["endpoints"]
    assert endpoints["https://user:[secure]@primary.example"]["verdict"] == "open"
    assert endpoints[BACKUP]["verdict"] == "closed"
    # A cluster-wide override on one endpoint reaches that endpoint only.
    b.breakers("pay")[BACKUP].force_open(scope="cluster", ttl=60)
    await sync(b, c)
    assert quiet[BACKUP].state is seawall.BreakerState.FORCED_OPEN
    assert a.breakers("pay")[PRIMARY].state is seawall.BreakerState.OPEN  # its own, local
    await sync(a)
    assert a.breakers("pay")[BACKUP].state is seawall.BreakerState.FORCED_OPEN
    # Redis holds a digest of each endpoint, never its URL (nor its password).
    client = redis_server.client()
    prefix = f"{{seawall:{cluster.namespace}}}"
    fields = client.hkeys(f"{prefix}:agg")
    assert sorted(f for f in fields if f.startswith(b"pay")) == sorted(
        [b"pay", endpoint_key("pay", PRIMARY).encode(), endpoint_key("pay", BACKUP).encode()]
    )
    for key in client.scan_iter(f"{prefix}*"):
        dump = repr(client.dump(key))
        assert "hunter2" not in dump
        assert "example" not in dump
    client.close()


async def test_a_sync_carries_one_endpoint_when_only_its_breaker_changed(
    cluster: Cluster,
) -> None:
    (a,), _ = await endpoint_replicas(cluster, 1)
    await sync(a)
    outcomes(a.breakers("pay")[BACKUP], 4, failed=False)
    await sync(a)
    assert a.state is not None
    assert a.state._sending == [endpoint_key("pay", BACKUP)]


async def test_an_endpoint_removed_by_a_reload_is_taken_out_of_its_aggregate(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    def config(*endpoints: str) -> dict[str, object]:
        return {
            "dependencies": {
                "pay": {
                    "endpoints": list(endpoints),
                    "breaker": {"minimum_calls": 4, "window_size": 10},
                    "shared": {"breaker": "advisory"},
                }
            }
        }

    other = "https://other.example"
    registry = seawall.Registry.from_config(
        config(PRIMARY, BACKUP), clock=cluster.clock, state=cluster.state()
    )
    await cluster.stack.enter_async_context(registry)
    client = redis_server.client()
    agg = f"{{seawall:{cluster.namespace}}}:agg"

    def live(endpoint: str) -> int | None:
        raw = client.hget(agg, endpoint_key("pay", endpoint))
        return None if raw is None else AGGREGATE.unpack(raw)[1]

    assert (live(PRIMARY), live(BACKUP), live(other)) == (1, 1, None)
    registry.reload(config(PRIMARY, other))
    await sync(registry)
    assert (live(PRIMARY), live(BACKUP), live(other)) == (1, 0, 1)
    client.close()
