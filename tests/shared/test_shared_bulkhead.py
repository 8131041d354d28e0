"""The global bulkhead on a real Redis: the cap across replicas, grants, idle slots given
back, pressure, leases swept, strict mode, FIFO waiting, re-registration after a wipe."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from shared_helpers import Cluster, Replica, shared_policy, until
from shared_redis_server import RedisServer

import seawall
from seawall._adaptive import PROBE_PATIENCE
from seawall._shared import SharedBulkhead
from seawall.testing import ManualClock

pytestmark = pytest.mark.anyio


def capped(
    cap: int, *, step: int | None = None, idle: float = 0.5, local: int = 10, **kw: object
) -> seawall.Policy:
    return shared_policy(
        shared=seawall.Shared(
            bulkhead=seawall.GlobalBulkhead(max_concurrent=cap, grant_step=step, idle_release=idle)
        ),
        bulkhead=seawall.Bulkhead(max_concurrent=local, **kw),  # type: ignore[arg-type]
    )


class Gate:
    """Calls that hold their slot until released; counts what is in flight per replica."""

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}
        self.peak = 0
        self.event = anyio.Event()
        self.refused: list[str] = []
        self.done = 0

    async def hold(self, name: str) -> None:
        self.in_flight[name] = self.in_flight.get(name, 0) + 1
        self.peak = max(self.peak, sum(self.in_flight.values()))
        try:
            await self.event.wait()
        finally:
            self.in_flight[name] -= 1

    async def call(self, replica: Replica, name: str) -> None:
        try:
            await replica.guard.call(self.hold, name)
        except seawall.BulkheadFullError as exc:
            self.refused.append(str(exc))
        self.done += 1

    @property
    def running(self) -> int:
        return sum(self.in_flight.values())


async def test_the_cap_holds_across_replicas(cluster: Cluster) -> None:
    a, b = await cluster.add(capped(6, step=2), 2)
    assert isinstance(a.bulkhead, SharedBulkhead)
    gate = Gate()
    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(gate.call, a, "a")
            tg.start_soon(gate.call, b, "b")
        await until(lambda: gate.running + len(gate.refused) == 16)
        assert gate.running == 6
        assert len(gate.refused) == 10
        assert all("global bulkhead of 'pay' is full" in m for m in gate.refused)
        assert a.bulkhead.held + b.bulkhead.held == 6
        await a.sync()
        assert a.state.view("pay").slots == 6
        gate.event.set()
    assert gate.peak == 6
    assert a.state.counters.round_trips["grant"] >= 1


async def test_a_call_costs_no_round_trip_while_the_pocket_has_slots(cluster: Cluster) -> None:
    (a,) = await cluster.add(capped(40, step=8))
    await a.succeed(1)
    grants = a.state.counters.round_trips["grant"]
    assert grants == 1
    assert a.bulkhead.held == 8
    await a.succeed(50)  # sequential: one slot at a time, from the pocket
    assert a.state.counters.round_trips["grant"] == grants


async def test_idle_slots_go_back_after_idle_release(cluster: Cluster, clock: ManualClock) -> None:
    (a,) = await cluster.add(capped(40, step=4, idle=0.5))
    await a.succeed(3)
    assert a.bulkhead.held == 4
    await a.sync()
    assert a.state.view("pay").slots == 4
    clock.advance(0.5)
    await a.sync()  # the first window saw slots in use
    clock.advance(0.5)
    await a.sync()  # four slots idle for a whole window: back
    assert a.bulkhead.held == 0
    assert a.state.view("pay").slots == 0
    await a.succeed(1)  # and a grant again when needed
    assert a.bulkhead.held == 4


async def test_pressure_makes_idle_slots_go_back_at_once(cluster: Cluster) -> None:
    a, b = await cluster.add(capped(4, step=4, idle=60.0), 2)
    await a.succeed(1)  # a holds all four, idle
    with pytest.raises(seawall.BulkheadFullError, match="global"):
        await b.succeed(1)
    await a.sync()  # told of the pressure: gives its idle slots back now
    await until(lambda: a.bulkhead.held == 0 and a.bulkhead._flush is None)
    await b.sync()
    assert b.state.view("pay").slots == 0
    await b.succeed(1)
    assert b.bulkhead.held == 4


async def test_a_silent_replica_loses_its_slots_with_its_lease(
    cluster: Cluster, clock: ManualClock
) -> None:
    a, b = await cluster.add(capped(4, step=4, idle=3600.0), 2, lease_ttl=60.0)
    await a.succeed(1)
    with pytest.raises(seawall.BulkheadFullError):
        await b.succeed(1)
    clock.advance(61)  # a never syncs again (a dead or cut-off replica)
    await b.sync()  # the sweep is due: a's lease is over
    assert b.state.view("pay").slots == 0
    assert b.state.live_replicas == 1
    await b.succeed(1)
    assert b.bulkhead.held == 4


async def test_strict_mode_is_one_grant_per_call_and_slots_go_back_at_once(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    policy = capped(2, step=1, idle=0.0)
    a, b = await cluster.add(policy, 2)
    for _ in range(3):
        await a.succeed(1)
        await until(lambda: a.bulkhead.held == 0 and a.bulkhead._flush is None)
    assert a.state.counters.round_trips["grant"] == 3
    gate = Gate()
    async with anyio.create_task_group() as tg:
        for _ in range(2):
            tg.start_soon(gate.call, a, "a")
            tg.start_soon(gate.call, b, "b")
        await until(lambda: gate.running + len(gate.refused) == 4)
        assert gate.running == 2
        gate.event.set()
    await until(lambda: a.bulkhead.held + b.bulkhead.held == 0)
    await a.sync()
    assert a.state.view("pay").slots == 0


async def test_waiters_are_served_first_come_first_served(cluster: Cluster) -> None:
    (a,) = await cluster.add(capped(2, step=2, max_wait=30.0))
    order: list[int] = []
    gates = [anyio.Event() for _ in range(4)]

    async def call(i: int) -> None:
        async def work() -> None:
            order.append(i)
            await gates[i].wait()

        await a.guard.call(work)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, 0)
        await until(lambda: order == [0])
        tg.start_soon(call, 1)
        await until(lambda: order == [0, 1])
        tg.start_soon(call, 2)
        await until(lambda: a.bulkhead.statistics().waiting == 1)
        tg.start_soon(call, 3)
        await until(lambda: a.bulkhead.statistics().waiting == 2)
        gates[1].set()
        await until(lambda: order == [0, 1, 2])
        gates[0].set()
        await until(lambda: order == [0, 1, 2, 3])
        gates[2].set()
        gates[3].set()
    assert a.bulkhead.statistics().in_use == 0


async def test_after_a_wipe_the_replica_re_registers_the_slots_its_calls_hold(
    own_redis: RedisServer, namespace: str, clock: ManualClock
) -> None:
    import contextlib

    async with contextlib.AsyncExitStack() as stack:
        cluster = Cluster(own_redis.url, namespace, clock, stack)
        a, b = await cluster.add(capped(4, step=1, idle=3600.0), 2)
        gate = Gate()
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(gate.call, a, "a")
            await until(lambda: gate.running == 3)
            own_redis.flushall()
            await a.sync()  # a new record: a holds what its three calls in flight need
            assert a.bulkhead.held == 3
            await b.sync()
            assert b.state.view("pay").slots == 3
            for _ in range(2):
                tg.start_soon(gate.call, b, "b")
            await until(lambda: gate.running + len(gate.refused) == 5)
            assert gate.in_flight.get("b") == 1
            assert len(gate.refused) == 1
            gate.event.set()


async def test_over_its_grant_after_a_wipe_a_replica_starts_no_call(
    own_redis: RedisServer, namespace: str, clock: ManualClock
) -> None:
    import contextlib

    async with contextlib.AsyncExitStack() as stack:
        cluster = Cluster(own_redis.url, namespace, clock, stack)
        a, b = await cluster.add(capped(4, step=1, idle=3600.0), 2)
        gate = Gate()
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(gate.call, a, "a")
            await until(lambda: gate.running == 2)
            own_redis.flushall()
            await b.sync()
            for _ in range(4):
                tg.start_soon(gate.call, b, "b")  # b takes the whole cap first
            await until(lambda: gate.in_flight.get("b") == 4)
            await a.sync()  # nothing left for a's two calls: it holds none
            assert a.bulkhead.held == 0
            with pytest.raises(seawall.BulkheadFullError):
                await a.succeed(1)
            gate.event.set()


async def test_strict_mode_a_call_starting_in_the_same_turn_takes_the_slot_with_no_round_trip(
    cluster: Cluster,
) -> None:
    (a,) = await cluster.add(capped(2, step=1, idle=0.0))
    a.bulkhead.release(await a.bulkhead.acquire())  # one grant; the slot back at the turn's end
    for _ in range(5):  # each takes the slot the previous one left, before it goes back
        a.bulkhead.release(await a.bulkhead.acquire())
    trips = a.state.counters.round_trips
    assert trips["grant"] == 1
    assert trips["release"] == 0
    await until(lambda: a.bulkhead.held == 0 and a.bulkhead._flush is None)
    assert trips["release"] == 1
    await a.sync()
    assert a.state.view("pay").slots == 0


async def test_strict_mode_a_release_waiting_behind_one_in_flight_rides_on_the_next_grant(
    own_redis: RedisServer, namespace: str, clock: ManualClock
) -> None:
    import contextlib

    async with contextlib.AsyncExitStack() as stack:
        cluster = Cluster(own_redis.url, namespace, clock, stack)
        (a,) = await cluster.add(capped(4, step=1, idle=0.0))
        bulkhead = a.bulkhead
        first, second = await bulkhead.acquire(), await bulkhead.acquire()
        trips = a.state.counters.round_trips
        assert (trips["grant"], bulkhead.held) == (2, 2)
        own_redis.slow(300)  # what is sent now waits: the release below stays in flight
        bulkhead.release(first)
        await until(lambda: bulkhead._flush is not None)
        bulkhead.release(second)
        await until(lambda: bulkhead._flush_again)  # a second release, held back
        third = await bulkhead.acquire()  # a grant, carrying the second release
        assert not bulkhead._flush_again
        bulkhead.release(third)
        await until(lambda: bulkhead.held == 0 and bulkhead._flush is None)
        assert (trips["grant"], trips["release"]) == (3, 2)  # not 3 releases
        await a.sync()
        assert a.state.view("pay").slots == 0


async def test_strict_mode_never_exceeds_the_cap_and_leaks_no_slot_under_churn(
    cluster: Cluster,
) -> None:
    import random

    # Calls wait in line (max_wait) while the replicas sync every 50 ms, so slots
    # move between replicas: grants, releases, slots taken in the same turn,
    # releases riding on grants, all at once.
    replicas = await cluster.add(capped(4, step=1, idle=0.0, max_wait=5.0), 3, sync_interval=0.05)
    rng = random.Random(14)
    in_flight = peak = done = 0

    async def work() -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            for _ in range(rng.randrange(4)):
                await anyio.lowlevel.checkpoint()  # other calls start and end meanwhile
        finally:
            in_flight -= 1

    async def caller(replica: Replica) -> None:
        nonlocal done
        for _ in range(20):
            await replica.guard.call(work)
            done += 1
            for _ in range(rng.randrange(3)):
                await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        for replica in replicas:
            for _ in range(3):
                tg.start_soon(caller, replica)
    assert done == 9 * 20
    assert peak <= 4
    assert all(r.state.counters.local_decisions["bulkhead"] == 0 for r in replicas)
    await until(lambda: all(r.bulkhead.held == 0 and r.bulkhead._flush is None for r in replicas))
    await cluster.sync_all()
    assert replicas[0].state.view("pay").slots == 0


async def test_an_adaptive_local_limit_moves_within_the_global_cap(
    cluster: Cluster, clock: ManualClock
) -> None:
    """Bulkhead.adaptive under a GlobalBulkhead: the replica's own cap follows the
    latency (here, the probe for the minimum RTT lowers it), the grant is kept."""
    policy = capped(40, step=20, idle=3600.0, local=20, adaptive=seawall.AdaptiveLimit())
    (a,) = await cluster.add(policy)
    bulkhead = a.bulkhead
    assert isinstance(bulkhead, SharedBulkhead)
    tokens = [bulkhead.try_acquire()]  # the pocket is empty: no slot without a grant
    assert tokens == [None]
    await a.succeed(1)  # one grant of 20; its latency starts the probe
    assert bulkhead.held == 20
    stats = bulkhead.statistics()
    assert stats.adaptive is not None
    assert stats.limit == 20
    tokens = [bulkhead.try_acquire() for _ in range(6)]
    assert all(t is not None for t in tokens)
    bulkhead.observe(0.01, False)
    clock.advance(PROBE_PATIENCE)
    bulkhead.observe(0.01, False)  # the probe holds the limit at a quarter of 20
    assert bulkhead.statistics().limit == 5
    assert bulkhead.held == 20  # only this replica's own cap moved
    assert bulkhead.try_acquire() is None  # 6 in flight, over 5
    refused = bulkhead.rejection()
    assert (refused.detail, refused.limit) == ("adaptive", 5)
    assert "its adaptive limit now" in str(refused)
    for token in tokens:
        bulkhead.release(token)  # type: ignore[arg-type]
    assert bulkhead.statistics().in_use == 0


async def test_the_global_cap_refuses_with_detail_global(cluster: Cluster) -> None:
    a, b = await cluster.add(capped(2, step=2, idle=3600.0), 2)
    gate = Gate()
    async with anyio.create_task_group() as tg:
        tg.start_soon(gate.call, a, "a")
        tg.start_soon(gate.call, a, "a")
        await until(lambda: gate.running == 2)
        with pytest.raises(seawall.BulkheadFullError) as info:
            await b.succeed(1)
        gate.event.set()
    assert (info.value.detail, info.value.limit) == ("global", 2)
