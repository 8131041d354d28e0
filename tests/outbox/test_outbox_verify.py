"""Unknown outcomes: verify, resend with the same key, or wait for reconcile and a person."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

import seawall
from conftest import T0, enqueue, plain_policy, row
from seawall.outbox import Entry, Failure, Outbox, Verdict
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


async def test_a_blackhole_is_unknown(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    upstream.route("/v1/charges", Fault.hang())
    ref = await enqueue(outbox)
    assert (await outbox.dispatcher().run_once()).outcomes == {"unknown": 1}
    entry = await row(outbox, ref.id)
    assert entry["state"] == "unknown"
    assert entry["verify_at"] == T0 + 30  # verify_delay
    assert entry["last_error"].startswith("outcome_unknown: ")


async def test_not_applied_resends_with_the_same_key(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    upstream.route("/v1/charges", Fault.hang(), Fault.ok())
    seen: list[str] = []

    @outbox.verifier("payments")
    async def verify(entry: Entry, client: Any) -> Verdict:
        seen.append(entry.idempotency_key)
        response = await client.get(f"/v1/charges/{entry.idempotency_key}")
        assert response.status_code == 200
        return Verdict.not_applied()

    ref = await enqueue(outbox)
    d = outbox.dispatcher()
    await d.run_once()
    assert not (await d.run_once()).busy  # verify_delay not over
    clock.advance(30)
    report = await d.run_once()
    assert report.verified == 1
    assert report.outcomes == {"pending": 1, "succeeded": 1}  # made pending, resent at once
    assert seen == [ref.idempotency_key]
    posts = [r for r in upstream.requests() if r.method == "POST"]
    assert [r.idempotency_key for r in posts] == [ref.idempotency_key] * 2


async def test_succeeded_resends_nothing_and_runs_on_success(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    upstream.route("/v1/charges", Fault.hang())
    hooked: list[Any] = []

    @outbox.verifier("payments")
    async def verify(entry: Entry, client: Any) -> Verdict:
        return Verdict.succeeded({"id": "ch_1"})

    @outbox.on_success("payments")
    async def paid(entry: Entry, response: Any, s: AsyncSession) -> None:
        hooked.append(response)

    ref = await enqueue(outbox)
    d = outbox.dispatcher()
    await d.run_once()
    clock.advance(30)
    await d.drain()
    assert (await row(outbox, ref.id))["state"] == "succeeded"
    assert hooked == [{"id": "ch_1"}]
    assert upstream.count("/v1/charges") == 1


async def test_failed_verdict_compensates(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    upstream.route("/v1/charges", Fault.hang())
    failures: list[Failure] = []

    @outbox.verifier("payments")
    async def verify(entry: Entry, client: Any) -> Verdict:
        return Verdict.failed("card_declined")

    @outbox.compensator("payments")
    async def cancel_order(entry: Entry, failure: Failure, s: AsyncSession) -> None:
        failures.append(failure)

    ref = await enqueue(outbox)
    d = outbox.dispatcher()
    await d.run_once()
    clock.advance(30)
    await d.drain()
    assert (await row(outbox, ref.id))["state"] == "compensated"
    assert [(f.reason, f.detail) for f in failures] == [("verified_failed", "card_declined")]


async def test_unknown_verdict_and_errors_verify_again_later(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    upstream.route("/v1/charges", Fault.hang())
    answers: list[Any] = [Verdict.unknown(retry_after=120), RuntimeError("status API down"), "junk"]

    @outbox.verifier("payments")
    async def verify(entry: Entry, client: Any) -> Verdict:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    ref = await enqueue(outbox)
    d = outbox.dispatcher()
    await d.run_once()
    clock.advance(30)
    await d.run_once()
    entry = await row(outbox, ref.id)
    assert (entry["state"], entry["verify_at"], entry["verify_attempts"]) == (
        "unknown",
        clock.now() + 120,
        1,
    )
    for attempt in (2, 3):  # an exception, then a non-Verdict: both count as unknown
        clock.advance(entry["verify_at"] - clock.now())
        await d.run_once()
        entry = await row(outbox, ref.id)
        assert (entry["state"], entry["verify_attempts"]) == ("unknown", attempt)
        assert entry["verify_at"] >= clock.now() + 30  # at least verify_delay
    assert upstream.count("/v1/charges") == 1


async def test_no_verifier_and_keys_honoured_resends_after_verify_delay(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    upstream.route("/v1/charges", Fault.hang(), Fault.ok())
    ref = await enqueue(outbox)
    d = outbox.dispatcher()
    await d.run_once()
    clock.advance(30)
    assert (await d.drain()).outcomes == {"pending": 1, "succeeded": 1}
    assert [r.idempotency_key for r in upstream.requests()] == [ref.idempotency_key] * 2


async def test_no_verifier_on_a_key_ignoring_dependency_stays_unknown_and_reconcile_exits_3(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    outbox.route("payments", honours_idempotency_key=False)
    upstream.route("/v1/charges", Fault.hang())
    ref = await enqueue(outbox)
    d = outbox.dispatcher()
    await d.run_once()
    entry = await row(outbox, ref.id)
    assert (entry["state"], entry["verify_at"]) == ("unknown", None)
    clock.advance(86400 * 3)
    assert not (await d.drain()).busy
    report = await outbox.reconcile(older_than=3600)
    assert report.exit_code == 3
    assert [a["id"] for a in report.attention] == [ref.id]
    assert upstream.count() == 1  # never resent
    # A person settles it; reconcile is then clean.
    assert await outbox.resolve(ref.id, "succeeded")
    assert (await outbox.reconcile(older_than=3600)).exit_code == 0
    assert (await row(outbox, ref.id))["state"] == "succeeded"


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


async def test_outcome_unknown_error_without_a_key_is_unknown(
    outbox: Outbox, upstream: FaultyUpstream
) -> None:
    """A keyless POST reset mid-answer: the client raises OutcomeUnknownError."""
    outbox.route("payments", honours_idempotency_key=False)
    upstream.route("/v1/charges", Fault.reset_connection())
    ref = await enqueue(outbox)
    await outbox.dispatcher().run_once()
    entry = await row(outbox, ref.id)
    assert entry["state"] == "unknown"
    assert "OutcomeUnknownError" in entry["last_error"]


async def test_a_reconciler_settles_stale_unknowns_in_batches(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    outbox.route("payments", honours_idempotency_key=False)
    upstream.route("/v1/charges", Fault.hang())
    refs = [await enqueue(outbox) for _ in range(3)]
    await outbox.dispatcher(concurrency=3).run_once()
    batches: list[list[int]] = []

    @outbox.reconciler("payments")
    async def settle(entries: list[Entry], client: Any) -> dict[int, Verdict]:
        batches.append([e.id for e in entries])
        return {
            refs[0].id: Verdict.succeeded(),
            refs[1].id: Verdict.failed("not in the settlement report"),
        }

    dry = await outbox.reconcile(older_than=60, dry_run=True)
    assert dry.candidates["unknown"] == 0  # not stale yet
    clock.advance(61)
    dry = await outbox.reconcile(older_than=60, dry_run=True)
    assert (dry.candidates["unknown"], dry.transitions) == (3, {})
    report = await outbox.reconcile(older_than=60)
    assert batches == [[r.id for r in refs]]
    assert report.transitions == {"unknown->failed": 1, "unknown->succeeded": 1}
    assert report.exit_code == 0  # the third stays unknown: the reconciler will see it again
    states = [(await row(outbox, r.id))["state"] for r in refs]
    assert states == ["succeeded", "failed", "unknown"]


async def test_reconcile_retries_compensations_and_fails_old_pending_entries(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    outbox.route("payments", max_age=3600)
    upstream.route("/v1/charges", Fault.error(503))
    compensated: list[str] = []

    @outbox.compensator("payments")
    async def undo(entry: Entry, failure: Failure, s: AsyncSession) -> None:
        compensated.append(failure.reason)

    ref = await enqueue(outbox)
    await outbox.dispatcher().run_once()  # 503: pending, retry in 1 s
    # No dispatcher runs for two hours (a stopped worker, say).
    clock.advance(7200)
    report = await outbox.reconcile()
    assert report.transitions == {"pending->compensated": 1}
    assert compensated == ["max_age"]
    assert (await row(outbox, ref.id))["state"] == "compensated"
