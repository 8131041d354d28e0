"""Redis slow, down, restarted or wiped, on a real redis-server of the test's own.

No call fails because of Redis; a hot-path wait lasts at most ``budget``; the
state degrades once (one log event) and recovers once. The breaker on Redis
itself runs on the ManualClock, so its open time is moved past by hand.
"""

from __future__ import annotations

import json

import anyio
import pytest
import structlog
from shared_helpers import Cluster, Replica, shared_policy, until
from shared_redis_server import RedisServer

import seawall
from seawall._shared._lua import SYNC
from seawall.testing import ManualClock

pytestmark = pytest.mark.anyio

EVERY_CALL_ASKS = seawall.Shared(
    breaker="advisory",
    bulkhead=seawall.GlobalBulkhead(max_concurrent=4, grant_step=1, idle_release=0.0),
    rate_limit=seawall.SharedRateLimit(reserve=1, reserve_ttl=0.0),
)


def policy(shared: seawall.Shared = EVERY_CALL_ASKS) -> seawall.Policy:
    return shared_policy(
        shared=shared,
        bulkhead=seawall.Bulkhead(max_concurrent=10),
        rate_limit=seawall.RateLimit(rate=1000, burst=1000),
    )


async def recover(replica: Replica, clock: ManualClock) -> None:
    """Sync until it works: each try past the open time of the breaker on Redis.

    A restarted server leaves dead connections in the pool, each failing once.
    """
    for _ in range(20):
        if await replica.state.sync():
            return
        clock.advance(31)
    raise AssertionError(f"never recovered: {replica.state.snapshot()}")


def events(logs: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [e for e in logs if e["event"] == name]


async def test_a_paused_redis_fails_no_call_and_degrades_once(
    faulty: Cluster, own_redis: RedisServer, clock: ManualClock
) -> None:
    (a,) = await faulty.add(policy(), budget=0.02, command_timeout=0.2)
    await a.succeed(3)
    assert a.state.status == "connected"
    with structlog.testing.capture_logs() as logs:
        own_redis.pause()  # SIGSTOP: connections accepted, never answered
        try:
            for _ in range(5):
                await a.succeed(1)  # each waits at most budget, then decides alone
            await until(lambda: a.state.status == "degraded")
            for _ in range(20):
                await a.succeed(1)  # degraded: no wait on Redis at all
            assert a.state.counters.local_decisions["bulkhead"] >= 1
            assert a.state.counters.local_decisions["rate_limit"] >= 1
            assert not await a.state.sync()  # no probe before the open time is up
        finally:
            own_redis.resume()
        await recover(a, clock)
        await a.succeed(3)
    assert a.state.status == "connected"
    assert len(events(logs, "seawall.shared.degraded")) == 1
    assert len(events(logs, "seawall.shared.recovered")) == 1
    assert events(logs, "seawall.shared.degraded")[0]["reason"] == "TimeoutError"
    assert a.state.counters.errors


async def test_a_restarted_redis_gets_its_scripts_again_and_every_replica_re_registers(
    faulty: Cluster, own_redis: RedisServer, clock: ManualClock
) -> None:
    shared = seawall.Shared(
        breaker="advisory",
        bulkhead=seawall.GlobalBulkhead(max_concurrent=4, grant_step=4, idle_release=3600.0),
    )
    a, b = await faulty.add(policy(shared), 2)
    await a.fail(4)
    await a.succeed(0)
    await faulty.sync_all()
    epoch = a.state._epoch
    own_redis.kill()
    await b.succeed(2)  # slots from b's pocket: no Redis needed
    own_redis.restart()  # empty, no scripts loaded
    assert not own_redis.client().script_exists(SYNC.sha)[0]
    await recover(a, clock)
    await recover(b, clock)
    assert own_redis.client().script_exists(SYNC.sha)[0]
    assert a.state._epoch != epoch
    view = b.state.view("pay")
    assert (view.live, view.tripped) == (2, 1)
    assert b.bulkhead.held == 0  # the pocket went with the old server


async def test_a_slow_redis_costs_a_call_at_most_budget_and_the_late_grant_is_used(
    faulty: Cluster, own_redis: RedisServer
) -> None:
    shared = seawall.Shared(
        bulkhead=seawall.GlobalBulkhead(max_concurrent=8, grant_step=4, idle_release=3600.0)
    )
    (a,) = await faulty.add(policy(shared), budget=0.02, command_timeout=2.0)
    own_redis.slow(400)  # CLIENT PAUSE 400 ms ALL
    await a.succeed(1)  # the grant is late: the call goes on with the local share
    assert a.state.counters.local_decisions["bulkhead"] == 1
    assert a.bulkhead.held == 0
    await until(lambda: a.bulkhead.held == 4)  # the grant lands in the background
    assert a.state.status == "connected"
    grants = a.state.counters.round_trips["grant"]
    await a.succeed(3)
    assert a.state.counters.round_trips["grant"] == grants


async def test_degraded_the_bulkhead_caps_each_replica_at_its_share(
    faulty: Cluster, own_redis: RedisServer, clock: ManualClock
) -> None:
    shared = seawall.Shared(bulkhead=seawall.GlobalBulkhead(max_concurrent=4, grant_step=1))
    a, _b = await faulty.add(policy(shared), 2)
    await faulty.sync_all()
    own_redis.kill()
    for _ in range(3):
        await a.state.sync()  # three errors in a row: degraded
    assert a.state.status == "degraded"
    gate = anyio.Event()
    results: list[str] = []

    async def hold() -> None:
        await gate.wait()

    async def call() -> None:
        try:
            await a.guard.call(hold)
            results.append("ok")
        except seawall.BulkheadFullError:
            results.append("refused")

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(call)
        await until(lambda: a.bulkhead.statistics().in_use + len(results) == 3)
        assert a.bulkhead.statistics().in_use == 2  # 4 // 2 live replicas
        gate.set()
    assert sorted(results) == ["ok", "ok", "refused"]


async def test_degraded_with_on_unavailable_reject_the_bulkhead_refuses(
    faulty: Cluster, own_redis: RedisServer
) -> None:
    shared = seawall.Shared(
        bulkhead=seawall.GlobalBulkhead(max_concurrent=4, on_unavailable="reject")
    )
    (a,) = await faulty.add(policy(shared))
    own_redis.kill()
    for _ in range(3):
        await a.state.sync()
    with pytest.raises(seawall.BulkheadFullError, match="unavailable"):
        await a.succeed(1)


async def test_degraded_the_breaker_decides_on_local_evidence(
    faulty: Cluster, own_redis: RedisServer
) -> None:
    shared = seawall.Shared(breaker="advisory")
    a, b, c = await faulty.add(policy(shared), 3)
    own_redis.kill()
    for _ in range(3):
        await c.state.sync()
    await a.fail(4)
    await b.fail(4)
    await c.succeed(1)  # no verdict reaches it; its own calls decide
    assert c.breaker.state is seawall.BreakerState.CLOSED


async def test_the_password_appears_nowhere(
    tmp_path: object, namespace: str, clock: ManualClock
) -> None:
    from shared_redis_server import find_redis_server

    from seawall.redis import RedisState

    binary = find_redis_server()
    assert binary is not None
    server = RedisServer(binary, tmp_path, password="hunter2-very-secret")  # type: ignore[arg-type]
    server.start()
    try:
        state = RedisState(server.url, namespace=namespace, time="client", clock=clock)
        registry = seawall.Registry(clock=clock, state=state)
        registry.guard("pay", policy())
        with structlog.testing.capture_logs() as logs:
            async with registry:
                assert state.status == "connected"
                server.kill()
                for _ in range(3):
                    await state.sync()
                assert state.status == "degraded"
                snapshot = json.dumps(registry.snapshot())
        seen = " ".join([repr(state), repr(registry), snapshot, json.dumps(logs, default=str)])
        assert "hunter2" not in seen
        assert "[secure]" in repr(state)
    finally:
        server.stop()


async def test_an_evicted_aggregate_is_counted_anew_by_every_replica(
    faulty: Cluster, own_redis: RedisServer
) -> None:
    shared = seawall.Shared(
        breaker="advisory",
        bulkhead=seawall.GlobalBulkhead(max_concurrent=8, grant_step=2, idle_release=3600.0),
    )
    a, b = await faulty.add(policy(shared), 2)
    await a.fail(4)  # a's calls took two slots, b's one two more
    await b.succeed(1)
    await faulty.sync_all()
    assert b.state.view("pay").slots == 4
    # An allkeys-* eviction (or a hand) drops the aggregate, the records stay.
    own_redis.client().hdel(f"{{seawall:{faulty.namespace}}}:agg", "pay")
    for _ in range(2):
        await faulty.sync_all()
    view = b.state.view("pay")
    assert (view.live, view.tripped, view.evidence, view.slots) == (2, 1, 1, 4)
