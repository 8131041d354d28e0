"""The dispatcher: claims, leases, outcomes, backoff, ordering, breakers, hooks, compensation."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

import seawall
from conftest import (
    EXACT,
    T0,
    enqueue,
    eventually,
    make_engine,
    plain_policy,
    row,
    rows,
    session,
)
from seawall.outbox import Entry, Failure, Outbox, State
from seawall.testing import ManualClock
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio


async def succeeded(outbox: Outbox, entry_id: int) -> bool:
    return bool((await row(outbox, entry_id))["state"] == State.SUCCEEDED)


async def test_503_503_503_200_is_four_requests_with_one_key_and_the_backoff(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    upstream.route("/v1/charges", Fault.error(503), Fault.error(503), Fault.error(503), Fault.ok())
    ref = await enqueue(outbox)
    d = outbox.dispatcher()
    waits = []
    for _ in range(3):
        assert (await d.run_once()).outcomes == {"pending": 1}
        entry = await row(outbox, ref.id)
        waits.append(entry["next_attempt_at"] - clock.now())
        assert not (await d.run_once()).busy  # not due yet
        clock.advance(waits[-1])
    assert waits == [1.0, 2.0, 4.0]  # Backoff(initial=1, multiplier=2), no jitter
    assert (await d.run_once()).outcomes == {"succeeded": 1}
    assert [r.idempotency_key for r in upstream.requests()] == [ref.idempotency_key] * 4
    entry = await row(outbox, ref.id)
    assert (entry["state"], entry["attempts"], entry["last_status"]) == ("succeeded", 4, 200)


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 502, 503, 504])
async def test_retryable_statuses_honour_retry_after(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock, status: int
) -> None:
    upstream.route("/v1/charges", Fault.error(status, retry_after=30), Fault.ok())
    ref = await enqueue(outbox)
    d = outbox.dispatcher()
    await d.run_once()
    entry = await row(outbox, ref.id)
    assert entry["state"] == "pending"
    assert entry["next_attempt_at"] == T0 + 30  # the server's wait, over the backoff's 1 s
    clock.advance(29)
    assert not (await d.run_once()).busy
    clock.advance(1)
    assert (await d.run_once()).outcomes == {"succeeded": 1}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_other_4xx_fail_at_once(
    outbox: Outbox, upstream: FaultyUpstream, status: int
) -> None:
    upstream.route("/v1/charges", Fault.error(status))
    ref = await enqueue(outbox)
    assert (await outbox.dispatcher().drain()).outcomes == {"failed": 1}
    entry = await row(outbox, ref.id)
    assert entry["last_error"].startswith(f"http_{status}")
    assert entry["compensate_at"] is None  # no compensator registered
    assert upstream.count() == 1


async def test_max_attempts_fails_and_compensates_once_and_its_follow_up_is_sent(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    outbox.route("payments", max_attempts=3)
    upstream.route("/v1/charges", Fault.error(503))
    calls: list[tuple[int, str]] = []

    @outbox.compensator("payments")
    async def refund(entry: Entry, failure: Failure, s: AsyncSession) -> None:
        calls.append((entry.id, failure.reason))
        await outbox.enqueue(s, "ledger", "POST", "/entries", json={"void": entry.id})

    ref = await enqueue(outbox)
    d = outbox.dispatcher()
    for _ in range(5):
        await d.drain()
        clock.advance(900)
    assert calls == [(ref.id, "max_attempts")]
    entry = await row(outbox, ref.id)
    assert (entry["state"], entry["attempts"]) == ("compensated", 3)
    assert upstream.count("/v1/charges") == 3
    [follow_up] = upstream.requests("/ledger/entries")
    assert json.loads(follow_up.body) == {"void": ref.id}


async def test_a_compensator_that_raises_commits_nothing_and_is_retried_then_flagged(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    outbox.route("payments", max_attempts=2)
    upstream.route("/v1/charges", Fault.error(422))
    tries: list[int] = []

    @outbox.compensator("payments")
    async def refund(entry: Entry, failure: Failure, s: AsyncSession) -> None:
        tries.append(entry.id)
        await outbox.enqueue(s, "ledger", "POST", "/entries", json={"void": entry.id})
        raise RuntimeError("the refund service said no")

    ref = await enqueue(outbox)
    d = outbox.dispatcher()
    await d.drain()
    entry = await row(outbox, ref.id)
    assert (entry["state"], entry["compensate_at"]) == ("failed", T0 + 1.0)  # backoff
    clock.advance(1)
    await d.drain()
    entry = await row(outbox, ref.id)
    assert entry["state"] == "failed"
    assert entry["needs_attention"]
    assert "the refund service said no" in entry["attention_reason"]
    assert entry["compensate_at"] is None
    assert len(tries) == 2
    clock.advance(10_000)
    assert not (await d.drain()).busy
    # The follow-ups rolled back with each failed compensation: never sent.
    assert upstream.count("/ledger/entries") == 0
    assert [r["dependency"] for r in await rows(outbox)] == ["payments"]


async def test_max_age_fails_a_retrying_entry(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    outbox.route("payments", max_age=60)
    upstream.route("/v1/charges", Fault.error(503))
    ref = await enqueue(outbox)
    d = outbox.dispatcher()
    await d.drain()
    clock.advance(61)
    await d.drain()
    entry = await row(outbox, ref.id)
    assert (entry["state"], entry["last_error"].split(":")[0]) == ("failed", "max_age")


async def test_ordering_key_sends_one_at_a_time_in_enqueue_order(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    upstream.route("/a/1", Fault.error(503), Fault.ok())
    a1 = await enqueue(outbox, path="/a/1", ordering_key="customer-1")
    await enqueue(outbox, path="/a/2", ordering_key="customer-1")
    await enqueue(outbox, path="/a/3", ordering_key="customer-1")
    await enqueue(outbox, path="/b/1", ordering_key="customer-2")
    await enqueue(outbox, path="/c/1")
    d = outbox.dispatcher()
    first = await d.run_once()
    assert first.claimed == 3  # the head of each key, and the unordered one
    assert sorted(r.path for r in upstream.requests()) == ["/a/1", "/b/1", "/c/1"]
    assert (await row(outbox, a1.id))["state"] == "pending"  # 503: /a/2 and /a/3 wait behind it
    assert not (await d.run_once()).busy
    clock.advance(1)
    for _ in range(3):
        assert (await d.run_once()).claimed == 1
    assert [r.path for r in upstream.requests() if r.path.startswith("/a/")] == [
        "/a/1",
        "/a/1",
        "/a/2",
        "/a/3",
    ]


async def test_an_open_breaker_stops_claims(
    upstream: FaultyUpstream, engine: Any, clock: ManualClock
) -> None:
    registry = seawall.Registry(clock=clock)
    registry.add(
        "payments",
        base_url=upstream.url,
        policy=plain_policy(breaker=seawall.CircuitBreaker(open_duration=30)),
    )
    outbox = Outbox(registry, engine, clock=clock)
    await outbox.create_schema()
    ref = await enqueue(outbox)
    registry.breaker("payments").force_open()
    d = outbox.dispatcher()
    assert not (await d.drain()).busy
    entry = await row(outbox, ref.id)
    assert (entry["state"], entry["attempts"]) == ("pending", 0)  # never claimed
    registry.breaker("payments").reset()
    assert (await d.drain()).outcomes == {"succeeded": 1}
    await registry.aclose()


async def test_a_rate_limit_refusal_holds_the_dependency_until_retry_after(
    upstream: FaultyUpstream, engine: Any, clock: ManualClock
) -> None:
    registry = seawall.Registry(clock=clock)
    registry.add(
        "payments",
        base_url=upstream.url,
        policy=plain_policy(rate_limit=seawall.RateLimit(rate=1, per=10, burst=1, max_wait=0)),
    )
    outbox = Outbox(registry, engine, clock=clock)
    outbox.route("payments", backoff=EXACT)
    await outbox.create_schema()
    for _ in range(3):
        await enqueue(outbox)
    d = outbox.dispatcher(concurrency=1)
    report = await d.run_once()
    assert report.outcomes == {"succeeded": 1, "pending": 2}
    assert upstream.count() == 1
    clock.advance(1)  # the backoff has passed, the rate limit's 10 s not yet
    assert not (await d.run_once()).busy
    clock.advance(9)
    assert (await d.run_once()).outcomes["succeeded"] == 1
    await registry.aclose()


async def test_on_success_runs_in_the_transaction_that_marks_it_succeeded(
    outbox: Outbox, upstream: FaultyUpstream
) -> None:
    marker = sa.Table("marker", sa.MetaData(), sa.Column("entry_id", sa.Integer))
    async with outbox.engine.begin() as conn:
        await conn.run_sync(marker.metadata.create_all)

    @outbox.on_success("payments")
    async def paid(entry: Entry, response: Any, s: AsyncSession) -> None:
        assert response.json()["n"] == 1
        await s.execute(marker.insert().values(entry_id=entry.id))

    ref = await enqueue(outbox)
    await outbox.dispatcher().drain()
    async with outbox.engine.connect() as conn:
        assert (await conn.execute(sa.select(marker.c.entry_id))).scalars().all() == [ref.id]
    assert (await row(outbox, ref.id))["state"] == "succeeded"


async def test_on_success_that_raises_is_flagged_and_never_resent(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    @outbox.on_success("payments")
    async def paid(entry: Entry, response: Any, s: AsyncSession) -> None:
        raise ValueError("cannot mark the order paid")

    ref = await enqueue(outbox)
    d = outbox.dispatcher()
    assert (await d.drain()).outcomes == {"succeeded": 1}
    entry = await row(outbox, ref.id)
    assert entry["state"] == "succeeded"
    assert entry["needs_attention"]
    assert "cannot mark the order paid" in entry["attention_reason"]
    clock.advance(10_000)
    assert not (await d.drain()).busy
    assert upstream.count() == 1


async def test_a_result_after_the_lease_passed_to_another_is_dropped(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    """Fencing: dispatcher A's lease expires mid-send, B re-claims; A's late write matches nothing."""
    outbox.route("payments", send_deadline=5, lease_margin=1)
    upstream.route("/v1/charges", Fault.latency(1.0), Fault.ok())  # A is slow
    ref = await enqueue(outbox)
    a, b = outbox.dispatcher(), outbox.dispatcher()
    result: list[Any] = []

    async def run_a() -> None:
        result.append(await a.run_once())

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_a)
        await eventually(lambda: upstream.count() == 1)
        clock.advance(7)  # A's lease (5 + 1 s) is over while its request is in flight
        assert (await b.run_once()).outcomes == {"succeeded": 1}
    assert result[0].lease_lost == 1
    assert a.lease_lost == 1
    entry = await row(outbox, ref.id)
    assert (entry["state"], entry["attempts"]) == ("succeeded", 2)
    assert [r.idempotency_key for r in upstream.requests()] == [ref.idempotency_key] * 2


async def test_an_expired_lease_is_resent_with_the_same_key(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    """A dispatcher that died mid-send: its claim expires, another resends (keys honoured)."""
    ref = await enqueue(outbox)
    dead = outbox.dispatcher()
    [claim] = await dead.worker.claim_sends(10)  # claimed, then the process "died"
    d = outbox.dispatcher()
    assert not (await d.run_once()).busy  # leased
    clock.advance(outbox.settings("payments").lease + 1)
    assert (await d.run_once()).outcomes == {"succeeded": 1}
    assert claim.entry.id == ref.id
    assert upstream.count(idempotency_key=ref.idempotency_key) == 1


async def test_an_expired_lease_on_a_key_ignoring_dependency_becomes_unknown(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    outbox.route("payments", honours_idempotency_key=False)
    ref = await enqueue(outbox)
    await outbox.dispatcher().worker.claim_sends(10)
    clock.advance(outbox.settings("payments").lease + 1)
    report = await outbox.dispatcher().run_once()
    assert report.swept == 1
    entry = await row(outbox, ref.id)
    assert entry["state"] == "unknown"
    assert upstream.count() == 0  # never resent: it may have happened


async def test_connect_errors_are_retried_later(
    registry: seawall.Registry, engine: Any, clock: ManualClock
) -> None:
    dead = seawall.Registry(clock=clock)
    dead.add(
        "payments",
        base_url=f"http://127.0.0.1:{FaultyUpstream.refused_port()}",
        policy=plain_policy(),
    )
    outbox = Outbox(dead, engine, clock=clock)
    await outbox.create_schema()
    ref = await enqueue(outbox)
    await outbox.dispatcher().drain()
    entry = await row(outbox, ref.id)
    assert (entry["state"], entry["last_error"]) == ("pending", "connect_error")
    await dead.aclose()


async def test_no_connection_is_held_while_calling_out(
    db_url: str, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    """pool_size=1: eight sends in flight at once, the pool free for claims and results."""
    engine = make_engine(db_url, pool_size=1, max_overflow=0, pool_timeout=5)
    registry = seawall.Registry(clock=clock)
    registry.add("payments", base_url=upstream.url, policy=plain_policy())
    outbox = Outbox(registry, engine, clock=clock)
    await outbox.create_schema()
    upstream.route("/v1/charges", Fault.latency(1.0))
    for _ in range(8):
        await enqueue(outbox)
    seen_open = []

    async def watch_connections() -> None:
        seen_open.append(
            await anyio.to_thread.run_sync(
                lambda: upstream.wait_for_open_connections(8, timeout=5.0)
            )
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_connections)
        report = await outbox.dispatcher(concurrency=8).run_once()
    assert report.outcomes == {"succeeded": 8}
    assert seen_open == [True]  # all eight requests were in flight together
    assert len({r["lease_owner"] for r in await rows(outbox)}) == 1
    await registry.aclose()
    await engine.dispose()


async def test_the_dispatcher_runs_in_the_background_and_wakes_on_commit(
    outbox: Outbox, upstream: FaultyUpstream
) -> None:
    """``async with dispatcher``: a commit wakes it (poll_interval is long), stop() ends it."""
    async with outbox.dispatcher(poll_interval=600):
        ref = await enqueue(outbox)
        await eventually(lambda: succeeded(outbox, ref.id))
    assert upstream.count() == 1


async def test_stop_lets_sends_in_flight_finish_and_records_them(
    outbox: Outbox, upstream: FaultyUpstream
) -> None:
    upstream.route("/v1/charges", Fault.latency(0.5))
    refs = [await enqueue(outbox) for _ in range(3)]
    async with outbox.dispatcher(poll_interval=600) as d:
        await eventually(lambda: upstream.count() == 3)
        d.stop()  # mid-send
    states = {(await row(outbox, r.id))["state"] for r in refs}
    assert states == {"succeeded"}
    assert d.lease_lost == 0


async def test_the_lifespan_runs_a_dispatcher(outbox: Outbox, upstream: FaultyUpstream) -> None:
    async with outbox.lifespan():
        ref = await enqueue(outbox)
        await eventually(lambda: succeeded(outbox, ref.id))


async def test_many_entries_in_grouped_writes(outbox: Outbox, upstream: FaultyUpstream) -> None:
    async with session(outbox.engine) as s, s.begin():
        for i in range(100):
            await outbox.enqueue(s, "payments", "POST", f"/v1/charges/{i}")
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(outbox.engine.sync_engine, "before_cursor_execute", seen)
    try:
        report = await outbox.dispatcher(batch_size=50, concurrency=50).drain()
    finally:
        sa.event.remove(outbox.engine.sync_engine, "before_cursor_execute", seen)
    assert report.outcomes == {"succeeded": 100}
    assert upstream.count() == 100
    # Two batches of 50: one claim and one grouped result write each (and a last,
    # empty claim); no statement per entry.
    result_writes = [s for s in statements if "lease_token = v.tok" in s]
    send_claims = [s for s in statements if "attempts=(" in s.replace(" ", "")]
    assert (len(result_writes), len(send_claims)) == (2, 3)


async def test_claimed_ahead_entries_whose_lease_ran_short_are_given_back(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    """Four claimed, one sending at a time: the three waiting outlive what their lease
    can cover, so they go back unsent (no attempt counted) and are claimed afresh."""
    outbox.route("payments", send_deadline=5, lease_margin=1)
    upstream.route("/v1/charges", Fault.latency(1.0), Fault.ok())
    refs = [await enqueue(outbox) for _ in range(4)]
    async with outbox.dispatcher(concurrency=1, batch_size=4, poll_interval=0.05):
        await eventually(lambda: upstream.count() == 1)
        clock.advance(2)  # now + send_deadline > lease_until for the three still queued
        await eventually(lambda: all_succeeded(outbox, refs))
    entries = [await row(outbox, r.id) for r in refs]
    assert [e["attempts"] for e in entries] == [1, 1, 1, 1]
    assert [e["lease_token"] for e in entries] == [1, 2, 2, 2]  # three claimed twice
    assert sorted(r.idempotency_key for r in upstream.requests()) == sorted(
        r.idempotency_key for r in refs
    )


async def test_stop_gives_back_what_was_claimed_but_not_sent(
    outbox: Outbox, upstream: FaultyUpstream
) -> None:
    upstream.route("/v1/charges", Fault.latency(0.5))
    refs = [await enqueue(outbox) for _ in range(4)]
    async with outbox.dispatcher(concurrency=1, batch_size=4, poll_interval=600) as d:
        await eventually(lambda: upstream.count() == 1)
        d.stop()
    entries = [await row(outbox, r.id) for r in refs]
    states = sorted((e["state"], e["attempts"]) for e in entries)
    assert states == [("pending", 0)] * 3 + [("succeeded", 1)]
    assert upstream.count() == 1


async def all_succeeded(outbox: Outbox, refs: list[Any]) -> bool:
    return all([await succeeded(outbox, r.id) for r in refs])


async def test_an_exchange_writes_results_fenced_and_claims_the_next_in_one_statement(
    outbox: Outbox, upstream: FaultyUpstream, backend: str
) -> None:
    """PostgreSQL: a group of results and the next claim are one statement; each result
    still fenced by its own lease token. SQLite: the write, then the claim."""
    refs = [await enqueue(outbox) for _ in range(6)]
    worker = outbox.dispatcher().worker
    first = await worker.claim_sends(3)
    results = [await worker.send(c) for c in first]
    stale = results[0]
    stale.row = replace(stale.row, token=stale.row.token + 7)  # its lease passed to another
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(outbox.engine.sync_engine, "before_cursor_execute", seen)
    try:
        lost, claims = await worker.exchange(results, 2)
    finally:
        sa.event.remove(outbox.engine.sync_engine, "before_cursor_execute", seen)
    assert len(statements) == (1 if backend == "postgresql" else 2)
    assert lost == 1
    assert len(claims) == 2
    assert {c.entry.id for c in claims}.isdisjoint(c.entry.id for c in first)
    states = {r["id"]: r["state"] for r in await rows(outbox)}
    assert states[stale.row.id] == "dispatching"  # dropped: not ours any more
    assert [states[r.row.id] for r in results[1:]] == ["succeeded", "succeeded"]
    assert sorted(states.values()) == ["dispatching"] * 3 + ["pending"] + ["succeeded"] * 2
    # Nothing to claim (limit 0), or nothing to write: one statement either way.
    assert await worker.exchange([], 0) == (0, [])
    left = {r.id for r in refs} - {c.entry.id for c in [*first, *claims]}
    lost, more = await worker.exchange([], 5)
    assert (lost, {c.entry.id for c in more}) == (0, left)


async def test_a_running_dispatcher_claims_in_the_statement_that_writes_results(
    outbox: Outbox, upstream: FaultyUpstream, backend: str
) -> None:
    """Every entry sent once, with its key, whichever way claims came (alone, or riding
    on a result write); on PostgreSQL some do ride on one."""
    async with session(outbox.engine) as s, s.begin():
        refs = [await outbox.enqueue(s, "payments", "POST", "/v1/charges") for _ in range(40)]
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(outbox.engine.sync_engine, "before_cursor_execute", seen)
    try:
        async with outbox.dispatcher(concurrency=2, batch_size=4, poll_interval=600) as d:
            await eventually(lambda: all_succeeded(outbox, refs))
    finally:
        sa.event.remove(outbox.engine.sync_engine, "before_cursor_execute", seen)
    assert d.lease_lost == 0
    keys = [r.idempotency_key for r in upstream.requests()]
    assert sorted(keys) == sorted(r.idempotency_key for r in refs)  # each once
    exchanges = [s for s in statements if s.lstrip().startswith("WITH w AS")]
    if backend == "postgresql":
        assert exchanges
    else:
        assert not exchanges


async def test_a_commit_while_a_claim_finds_nothing_is_not_left_for_the_next_poll(
    outbox: Outbox, upstream: FaultyUpstream
) -> None:
    """The claim's snapshot may miss an entry committed while it ran; the commit's wake-up
    makes the dispatcher claim again at once instead of waiting out poll_interval."""
    d = outbox.dispatcher(poll_interval=600)
    real = d.worker.claim_sends
    refs: list[Any] = []

    async def claim_then_commit(limit: int) -> Any:
        found = await real(limit)
        if not refs:
            refs.append(await enqueue(outbox))  # commits: wakes the dispatcher
        return found

    d.worker.claim_sends = claim_then_commit  # type: ignore[method-assign]
    async with d:
        await eventually(lambda: bool(refs) and succeeded(outbox, refs[0].id), within=10)
    assert upstream.count() == 1
