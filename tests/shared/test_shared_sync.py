"""The sync itself on a real Redis: what a sync carries (only what changed; a lease
renewal nothing more), binary records, a value of another layout read as lost."""

from __future__ import annotations

import pytest
from shared_helpers import Cluster, shared_policy
from shared_redis_server import RedisServer

import seawall
from seawall._shared._lua import AGGREGATE, ENTRY
from seawall.redis import RedisState
from seawall.testing import ManualClock

pytestmark = pytest.mark.anyio


def capped(cap: int, step: int) -> seawall.Policy:
    return shared_policy(
        shared=seawall.Shared(
            breaker="advisory",
            bulkhead=seawall.GlobalBulkhead(
                max_concurrent=cap, grant_step=step, idle_release=3600.0
            ),
        ),
    )


async def test_a_sync_carries_only_what_changed_and_a_lease_renewal_makes_good_a_lost_grant(
    cluster: Cluster, clock: ManualClock
) -> None:
    (a,) = await cluster.add(capped(8, 2), lease_ttl=60.0)
    await a.sync()
    assert a.state._sending == []  # nothing changed since the registration
    # A grant whose reply never came back: Redis counts two more slots for a.
    granted, _, total = await a.state.slots("pay", "g", 2, 8)
    assert (granted, total, a.bulkhead.held) == (2, 2, 0)
    await a.sync()
    assert a.bulkhead.held == 0  # a plain sync does not read the record back
    clock.advance(60)
    await a.sync()  # the lease renewal: still no dependency sent, the entries read back
    assert a.state._sending == []
    assert a.bulkhead.held == 2
    assert a.state.view("pay").slots == 2
    await a.fail(1)  # the breaker's summary changes (a call in its window): sent
    await a.succeed(3)
    await a.sync()
    assert a.state._sending == ["pay"]


async def test_records_are_binary_and_a_value_of_another_layout_reads_as_lost(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    a, b = await cluster.add(capped(8, 2), 2)
    await a.succeed(1)
    await cluster.sync_all()
    client = redis_server.client()
    prefix = f"{{seawall:{cluster.namespace}}}"
    raw = client.hget(f"{prefix}:agg", "pay")
    assert raw is not None
    assert len(raw) == AGGREGATE.size
    _, live, _, _, slots, *_ = AGGREGATE.unpack(raw)
    assert (live, slots) == (2, 2)
    entry = client.hget(f"{prefix}:r:{a.state.replica}", "pay")
    assert entry is not None
    assert len(entry) == ENTRY.size
    # An aggregate written by another layout (the text one of earlier builds).
    client.hset(f"{prefix}:agg", "pay", "abc-1 2 0 0 2 0 0 - 0 0")
    await a.sync()  # a new aggregate, of a new generation: a counts itself anew...
    await b.sync()  # ...b sees the generation change...
    await b.sync()  # ...and sends itself again
    await a.sync()
    view = a.state.view("pay")
    assert (view.live, view.slots) == (2, 2)
    client.close()


def test_a_client_that_decodes_its_replies_is_refused() -> None:
    from redis.asyncio import Redis

    with pytest.raises(seawall.ConfigError, match=r"RedisState\.client: must return bytes"):
        RedisState(client=Redis(decode_responses=True))
    RedisState(client=Redis())
