"""Operating an outbox: status, retry, resolve, purge and reconcile.

Each claims the entries it changes with the same leases as the dispatchers
(or fences its write on the lease token), so it runs beside them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog

from . import _telemetry as tel
from ._types import State, Verdict
from ._work import Claim, Result, Worker

if TYPE_CHECKING:
    from ._outbox import Outbox

__all__ = ["ReconcileReport", "counts", "get", "purge", "reconcile", "resolve", "retry", "status"]

_logger = structlog.get_logger("seawall")

#: Reconcile's batches (ids claimed at once, entries handed to a reconciler at once).
BATCH = 100
RESOLUTIONS = ("succeeded", "failed", "resend")


async def counts(outbox: Outbox) -> dict[tuple[str, str], tuple[int, float | None]]:
    """One grouped COUNT: {(dependency, state): (entries, oldest created_at)}."""
    async with outbox.engine.connect() as conn:
        rows = (await conn.execute(outbox._stmts.counts())).all()
    return {(dep, state): (n, oldest) for dep, state, n, oldest, _ in rows}


async def status(outbox: Outbox) -> dict[str, Any]:
    async with outbox.engine.connect() as conn:
        rows = (await conn.execute(outbox._stmts.counts())).all()
    now = outbox.clock.now()
    deps: dict[str, dict[str, Any]] = {}
    attention = 0
    for dep, state, n, oldest, flagged in rows:
        deps.setdefault(dep, {})[state] = {
            "count": n,
            "oldest_age": None if oldest is None else round(max(0.0, now - oldest), 3),
            "needs_attention": int(flagged or 0),
        }
        attention += int(flagged or 0)
    return {"dependencies": deps, "needs_attention": attention}


async def get(outbox: Outbox, entry_id: int) -> dict[str, Any] | None:
    async with outbox.engine.connect() as conn:
        row = (await conn.execute(outbox._stmts.row(entry_id))).mappings().first()
    return None if row is None else dict(row)


def _manual(outbox: Outbox, now: float) -> dict[str, Any]:
    t = outbox.table
    return {
        "lease_token": t.c.lease_token + 1,
        "lease_owner": None,
        "lease_until": None,
        "updated_at": now,
        "needs_attention": False,
        "attention_reason": None,
    }


async def retry(outbox: Outbox, entry_id: int) -> bool:
    t = outbox.table
    now = outbox.clock.now()
    stmt = (
        sa.update(t)
        .where(
            t.c.id == entry_id,
            t.c.state.in_([State.FAILED.value, State.UNKNOWN.value, State.CANCELLED.value]),
        )
        .values(
            state=State.PENDING,
            next_attempt_at=now,
            attempts=0,
            verify_at=None,
            compensate_at=None,
            finished_at=None,
            **_manual(outbox, now),
        )
        .returning(t.c.id, t.c.dependency)
    )
    async with outbox.engine.begin() as conn:
        row = (await conn.execute(stmt)).first()
    if row is not None:
        tel.transition(entry_id, row.dependency, "manual", "pending", reason="retry")
    return row is not None


async def resolve(outbox: Outbox, entry_id: int, outcome: str) -> bool:
    """Settle an entry by hand (unknown or failed; or clear the attention flag)."""
    if outcome not in RESOLUTIONS:
        raise ValueError(
            f"resolve(outcome): must be one of {', '.join(RESOLUTIONS)}, got {outcome!r}"
        )
    t = outbox.table
    now = outbox.clock.now()
    values: dict[str, Any] = _manual(outbox, now)
    if outcome == "succeeded":
        values.update(state=State.SUCCEEDED, finished_at=now, verify_at=None)
        where = sa.or_(
            t.c.state.in_([State.UNKNOWN.value, State.FAILED.value]),
            sa.and_(t.c.state == State.SUCCEEDED, t.c.needs_attention == sa.true()),
        )
    elif outcome == "failed":
        values.update(
            state=State.FAILED,
            finished_at=now,
            verify_at=None,
            last_error="resolved: failed by hand",
            compensate_at=sa.case(
                (t.c.dependency.in_(list(outbox._compensators) or [""]), now), else_=None
            ),
        )
        where = sa.or_(
            t.c.state == State.UNKNOWN,
            sa.and_(t.c.state == State.FAILED, t.c.needs_attention == sa.true()),
        )
    else:
        values.update(state=State.PENDING, next_attempt_at=now, verify_at=None, finished_at=None)
        where = t.c.state.in_([State.UNKNOWN.value, State.FAILED.value])
    stmt = (
        sa.update(t)
        .where(t.c.id == entry_id, where)
        .values(**values)
        .returning(t.c.id, t.c.dependency)
    )
    async with outbox.engine.begin() as conn:
        row = (await conn.execute(stmt)).first()
    if row is not None:
        tel.transition(entry_id, row.dependency, "manual", str(values["state"]), reason="resolve")
    return row is not None


async def purge(outbox: Outbox, older_than: float, *, page: int = 1000) -> int:
    """Delete terminal rows (succeeded, compensated, cancelled) finished before now - older_than.

    In pages, one short transaction each: a single big DELETE would hold
    SQLite's write lock (and many PostgreSQL row locks) for the whole sweep.
    """
    if isinstance(page, bool) or not isinstance(page, int) or page < 1:
        raise ValueError(f"purge(page): must be an integer >= 1, got {page!r}")
    if isinstance(older_than, bool) or not isinstance(older_than, int | float) or older_than < 0:
        raise ValueError(f"purge(older_than): must be seconds >= 0, got {older_than!r}")
    cutoff = outbox.clock.now() - older_than
    total = 0
    while True:
        async with outbox.engine.begin() as conn:
            deleted = (
                await conn.execute(outbox._stmts.purge_page(cutoff=cutoff, limit=page))
            ).rowcount
        total += deleted
        if deleted < page:
            break
    if total:
        _logger.info("seawall.outbox.purged", entries=total, older_than=older_than)
    return total


# -- reconcile ------------------------------------------------------------------------


@dataclass(slots=True)
class ReconcileReport:
    """What reconcile did (or, with ``dry_run``, would do).

    ``transitions`` counts ``"from->to"`` moves; ``attention`` lists the entries
    a person must look at; ``exit_code`` is 3 when there is any.
    """

    dry_run: bool = False
    transitions: dict[str, int] = field(default_factory=dict)
    attention: list[dict[str, Any]] = field(default_factory=list)
    candidates: dict[str, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 3 if self.attention else 0

    def moved(self, before: str, after: str, n: int = 1) -> None:
        key = f"{before}->{after}"
        self.transitions[key] = self.transitions.get(key, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "transitions": dict(sorted(self.transitions.items())),
            "candidates": dict(sorted(self.candidates.items())),
            "needs_attention": self.attention,
            "exit_code": self.exit_code,
        }


def _note(report: ReconcileReport, results: list[Result]) -> None:
    for r in results:
        before, after = str(r.claim.entry.state), str(r.row.state)
        if before != after:
            report.moved(before, after)


async def _ids(outbox: Outbox, where: Any) -> list[tuple[int, str]]:
    t = outbox.table
    async with outbox.engine.connect() as conn:
        rows = (
            await conn.execute(sa.select(t.c.id, t.c.dependency).where(where).order_by(t.c.id))
        ).all()
    return [(r[0], r[1]) for r in rows]


async def _claimed(worker: Worker, ids: list[int], states: list[str], lease: float) -> list[Claim]:
    out: list[Claim] = []
    for i in range(0, len(ids), BATCH):
        out.extend(
            await worker.claim(
                worker.stmts.claim_ids(
                    ids=ids[i : i + BATCH],
                    states=states,
                    now=worker.clock.now(),
                    owner=worker.owner,
                    lease=lease,
                )
            )
        )
    return out


async def reconcile(
    outbox: Outbox, *, older_than: float, dependency: str | None, dry_run: bool
) -> ReconcileReport:
    """Re-verify stale unknowns, retry compensations, fail pending entries past max_age,
    hand stale unknowns to reconcilers; report what needs a person."""
    report = ReconcileReport(dry_run=dry_run)
    t = outbox.table
    now = outbox.clock.now()
    deps = [dependency] if dependency is not None else list(outbox.registry.names)
    worker = Worker(outbox, f"reconcile:{os.getpid()}")
    lease = max([outbox.settings(d).lease for d in deps] or [60.0])
    mine = t.c.dependency.in_(deps)

    # 1. Stale unknown entries: reconciler, verifier, resend or a person.
    stale = await _ids(
        outbox, sa.and_(mine, t.c.state == State.UNKNOWN, t.c.created_at <= now - older_than)
    )
    report.candidates["unknown"] = len(stale)
    by_dep: dict[str, list[int]] = {}
    for entry_id, dep in stale:
        by_dep.setdefault(dep, []).append(entry_id)
    # 2. Compensations still to run.
    comps = await _ids(
        outbox,
        sa.and_(
            t.c.dependency.in_([d for d in deps if d in outbox._compensators] or [""]),
            t.c.state == State.FAILED,
            sa.or_(t.c.compensate_at.is_not(None), t.c.needs_attention == sa.true()),
        ),
    )
    report.candidates["compensations"] = len(comps)
    # 3. Pending entries past max_age.
    old: list[tuple[int, str]] = []
    for dep in deps:
        max_age = outbox.settings(dep).max_age
        old += await _ids(
            outbox,
            sa.and_(
                t.c.dependency == dep,
                t.c.state == State.PENDING,
                t.c.created_at <= now - max_age,
            ),
        )
    report.candidates["pending_past_max_age"] = len(old)

    if not dry_run:
        for dep, ids in by_dep.items():
            claims = await _claimed(worker, ids, [State.UNKNOWN.value], lease)
            await _settle_unknown(outbox, worker, dep, claims, report)
        claims = await _claimed(worker, [i for i, _ in comps], [State.FAILED.value], lease)
        results = [worker.compensation(c) for c in claims]
        await worker.write(results)
        _note(report, results)
        claims = await _claimed(worker, [i for i, _ in old], [State.PENDING.value], lease)
        results = [worker.expire(c) for c in claims]
        await worker.write(results)
        _note(report, results)

    # What needs a person: flagged entries, and unknowns nothing here can settle.
    async with outbox.engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(
                    t.c.id,
                    t.c.dependency,
                    t.c.state,
                    t.c.needs_attention,
                    t.c.attention_reason,
                    t.c.last_error,
                )
                .where(
                    mine,
                    sa.or_(
                        t.c.needs_attention == sa.true(),
                        sa.and_(
                            t.c.state == State.UNKNOWN,
                            t.c.created_at <= now - older_than,
                        ),
                    ),
                )
                .order_by(t.c.id)
            )
        ).all()
    for row in rows:
        if (
            row.state == State.UNKNOWN
            and not row.needs_attention
            and not dry_run
            and not _stuck(outbox, row.dependency)
        ):
            continue  # a verifier or reconciler will try again; a flagged entry still needs a person
        report.attention.append(
            {
                "id": row.id,
                "dependency": row.dependency,
                "state": row.state,
                "reason": row.attention_reason
                or (row.last_error or "outcome unknown: no verifier, reconciler or key"),
            }
        )
    return report


def _stuck(outbox: Outbox, dep: str) -> bool:
    """No verifier, no reconciler, and no key to resend with: only a person can settle it."""
    return (
        dep not in outbox._verifiers
        and dep not in outbox._reconcilers
        and not outbox.settings(dep).honours_idempotency_key
    )


async def _settle_unknown(
    outbox: Outbox, worker: Worker, dep: str, claims: list[Claim], report: ReconcileReport
) -> None:
    route = outbox.settings(dep)
    reconciler = outbox._reconcilers.get(dep)
    results: list[Result] = []
    if reconciler is not None:
        client = outbox.registry.client(dep)
        for i in range(0, len(claims), BATCH):
            batch = claims[i : i + BATCH]
            try:
                with tel.reconcile_span(dep, [c.trace_context for c in batch]):
                    verdicts: Mapping[int, Verdict] = await reconciler(
                        [c.entry for c in batch], client
                    )
            except Exception as exc:
                _logger.warning(
                    "seawall.outbox.reconciler_error", dependency=dep, error=str(exc)[:300]
                )
                verdicts = {}
            for c in batch:
                verdict = verdicts.get(c.entry.id) if isinstance(verdicts, Mapping) else None
                if not isinstance(verdict, Verdict):
                    verdict = Verdict.unknown()
                results.append(worker.apply_verdict(c, route, verdict))
    elif dep in outbox._verifiers or route.honours_idempotency_key:
        from ._work import run_all

        results = await run_all([functools.partial(worker.verify, c) for c in claims], 8)
    else:
        # Only a person can settle these: give the lease back, unchanged.
        results = [worker.release(c) for c in claims]
    await worker.write(results)
    _note(report, results)
