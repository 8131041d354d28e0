"""A flagged entry needs a person even when a verifier exists: reconcile exits 3 for it."""

from __future__ import annotations

from typing import Any

import pytest

import seawall
from conftest import enqueue, plain_policy, row
from seawall.outbox import Entry, Outbox, Verdict
from seawall.testing import ManualClock
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio


@pytest.fixture
def registry(upstream: FaultyUpstream, clock: ManualClock) -> seawall.Registry:
    """Reads time out fast (real time: the blackhole never answers)."""
    registry = seawall.Registry(clock=clock)
    policy = plain_policy(timeouts=seawall.Timeouts(read=0.2, attempt=None, total=None))
    registry.add("payments", base_url=upstream.url, policy=policy)
    registry.add("ledger", base_url=upstream.url + "/ledger", policy=plain_policy())
    return registry


async def test_unknown_past_max_age_with_a_verifier_is_flagged_and_reconcile_exits_3(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    outbox.route("payments", max_age=3600)
    upstream.route("/v1/charges", Fault.hang())
    asked: list[int] = []

    @outbox.verifier("payments")
    async def verify(entry: Entry, client: Any) -> Verdict:
        asked.append(entry.id)
        return Verdict.unknown()  # the provider cannot say either

    ref = await enqueue(outbox)
    d = outbox.dispatcher()
    await d.run_once()
    assert (await row(outbox, ref.id))["state"] == "unknown"
    clock.advance(7200)  # past max_age, and the verify time
    await d.drain()
    entry = await row(outbox, ref.id)
    assert asked == [ref.id]
    assert (entry["state"], entry["needs_attention"]) == ("unknown", True)
    report = await outbox.reconcile(older_than=60)
    assert report.exit_code == 3
    assert [a["id"] for a in report.attention] == [ref.id]
    assert "max_age" in report.attention[0]["reason"]
    assert upstream.count() == 1  # never resent
