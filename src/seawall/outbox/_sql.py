"""The outbox's SQL: every statement, built once per table and dialect.

Claims are one ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)
RETURNING`` each (SQLite has no ``FOR UPDATE``: it serializes writers, so the
statement is atomic there too). Result writes are fenced by the lease token,
and a batch of them is one ``UPDATE ... FROM (VALUES ...)`` whose RETURNING
says which rows were still ours.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ._types import TERMINAL, State

__all__ = ["CLAIM_COLUMNS", "ResultRow", "SendClaim", "Statements"]

#: What a claim returns of each row.
CLAIM_COLUMNS = (
    "id",
    "dependency",
    "method",
    "path",
    "headers",
    "body",
    "idempotency_key",
    "ordering_key",
    "state",
    "attempts",
    "created_at",
    "lease_token",
    "trace_context",
    "metadata",
    "last_status",
    "last_error",
    "verify_attempts",
    "compensate_attempts",
    "resend_safe",
)

#: States that hold back later entries of the same ordering key.
_BLOCKING = (State.PENDING, State.DISPATCHING, State.UNKNOWN)


@dataclass(frozen=True, slots=True)
class SendClaim:
    """What a claim of sends needs: time, size, owner, the dependencies that may be
    claimed and their leases (seconds)."""

    now: float
    limit: int
    owner: str
    leases: Mapping[str, float]
    default_lease: float
    allowed: Sequence[str]


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One fenced result write: the new values of a row claimed with ``token``."""

    id: int
    token: int
    state: str
    next_attempt_at: float | None = None
    verify_at: float | None = None
    finished_at: float | None = None
    last_status: int | None = None
    last_error: str | None = None
    compensate_at: float | None = None
    attention: bool = False
    attention_reason: str | None = None
    verify_attempts: int = 0
    #: None: unchanged (a claim counted the attempt).
    attempts: int | None = None


# (column, PostgreSQL type for the VALUES casts)
_RESULT_COLUMNS = (
    ("id", "BIGINT"),
    ("tok", "INTEGER"),
    ("state", "VARCHAR(16)"),
    ("next_attempt_at", "DOUBLE PRECISION"),
    ("verify_at", "DOUBLE PRECISION"),
    ("finished_at", "DOUBLE PRECISION"),
    ("last_status", "INTEGER"),
    ("last_error", "TEXT"),
    ("compensate_at", "DOUBLE PRECISION"),
    ("attention", "BOOLEAN"),
    ("attention_reason", "TEXT"),
    ("verify_attempts", "INTEGER"),
    ("attempts", "INTEGER"),
)


def _padded(n: int) -> int:
    """The size of the statement that writes *n* results: the next power of two.

    A few statement shapes instead of one per group size: PostgreSQL prepares
    each shape once per connection (a round trip, and planning), and a group
    size met once would be prepared for one use.
    """
    return 1 << max(0, n - 1).bit_length()


class Statements:
    """The statements of one outbox table on one dialect (``postgresql`` or ``sqlite``)."""

    def __init__(self, table: sa.Table, dialect: sa.Dialect) -> None:
        self.table = t = table
        self.dialect = dialect.name
        from sqlalchemy.dialects import postgresql, sqlite

        insert: Any = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
        self.insert = insert(t).on_conflict_do_nothing(
            index_elements=[t.c.dependency, t.c.idempotency_key]
        )
        #: PostgreSQL: ``RETURNING id`` says whether a row went in. SQLite: the row
        #: count and ``lastrowid`` say it without RETURNING, whose rows aiosqlite
        #: fetches in a second trip to its thread (and SQLite 3.24 has no RETURNING).
        self.insert_returns = dialect.name == "postgresql"
        if self.insert_returns:
            self.insert = self.insert.returning(t.c.id)
        self.existing = sa.select(t.c.id, t.c.fingerprint).where(
            t.c.dependency == sa.bindparam("dependency"),
            t.c.idempotency_key == sa.bindparam("idempotency_key"),
        )
        self.cancel = (
            sa.update(t)
            .where(t.c.id == sa.bindparam("entry_id"), t.c.state == State.PENDING)
            .values(
                state=State.CANCELLED,
                finished_at=sa.bindparam("now"),
                updated_at=sa.bindparam("now"),
                lease_token=t.c.lease_token + 1,
            )
            .returning(t.c.id)
        )
        self._returning = [t.c[name] for name in CLAIM_COLUMNS]
        self._result_sql: dict[int, sa.TextClause] = {}
        #: claim_sends' statements, by the dependencies with a lease of their own
        self._claim_sends: dict[tuple[str, ...], Any] = {}
        #: exchange's statements, by group size and claim shape
        self._exchanges: dict[tuple[int, tuple[str, ...]], Any] = {}
        # Built once: an alias makes a proxy of every column, which costs more
        # than the rest of a claim statement.
        self._alias_c = t.alias("c")
        self._alias_e = t.alias("e")
        self._alias_p = t.alias("p")
        quote = dialect.identifier_preparer
        self._quoted = quote.quote(t.name)
        if t.schema:
            self._quoted = f"{quote.quote_schema(t.schema)}.{self._quoted}"

    # -- claims ---------------------------------------------------------------------

    def _claim(
        self,
        due: Callable[[Any], sa.ColumnElement[bool]],
        order: Callable[[Any], Any],
        limit: int | sa.BindParameter[int],
        values: Mapping[str, Any],
    ) -> Any:
        """``UPDATE t SET values WHERE id IN (SELECT id FROM t AS c WHERE due(c) ...)``."""
        t = self.table
        c = self._alias_c
        sub = (
            sa.select(c.c.id)
            .where(due(c))
            .order_by(order(c))
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return sa.update(t).where(t.c.id.in_(sub)).values(**values).returning(*self._returning)

    def claim_sends(self, claim: SendClaim) -> tuple[Any, dict[str, Any]]:
        """Pending entries due now, and expired leases that are safe to resend.

        An entry whose ordering key has an earlier entry still pending,
        dispatching or unknown waits for it. Returns the statement and its
        parameters: the statement is built once per set of dependencies with
        a lease of their own (every value is a bound parameter), so SQLAlchemy
        neither rebuilds it nor computes its cache key again for each claim.
        """
        shape, params = self._claim_sends_params(claim)
        return self._claim_sends_of(shape), params

    def _claim_sends_of(self, shape: tuple[str, ...]) -> Any:
        stmt = self._claim_sends.get(shape)
        if stmt is None:
            stmt = self._claim_sends[shape] = self._claim_sends_stmt(shape)
        return stmt

    @staticmethod
    def _claim_sends_params(claim: SendClaim) -> tuple[tuple[str, ...], dict[str, Any]]:
        now, default = claim.now, claim.default_lease
        special = sorted(dep for dep, lease in claim.leases.items() if lease != default)
        params: dict[str, Any] = {
            "now": now,
            "claim_limit": claim.limit,
            "owner": claim.owner,
            "until": now + default,
            "allowed": list(claim.allowed),
        }
        for i, dep in enumerate(special):
            params[f"until_{i}"] = now + claim.leases[dep]
        return tuple(special), params

    def exchange(self, rows: Sequence[ResultRow], claim: SendClaim) -> tuple[Any, dict[str, Any]]:
        """PostgreSQL: a group of fenced result writes and the next send claim, one statement.

        ``WITH w AS (the results' UPDATE ... RETURNING id), c AS (the claim's UPDATE ...
        RETURNING ...) SELECT (SELECT array_agg(id) FROM w) AS written, c.* FROM (SELECT 1)
        LEFT JOIN c``: every row says which results were still ours (``written``),
        and the rows of ``c`` are the claims (none: one row of NULLs). Both parts see
        the statement's snapshot: an entry a result makes due again (or the next
        entry of an ordering key) is claimed by a later claim, not this one.
        """
        shape, params = self._claim_sends_params(claim)
        key = (_padded(len(rows)), shape)
        stmt = self._exchanges.get(key)
        if stmt is None:
            written = (
                sa.text(self._results_sql(key[0]))
                .columns(sa.column("id", sa.BigInteger()))
                .cte("w")
            )
            c = self._claim_sends_of(shape).cte("c")
            one = sa.select(sa.literal(1).label("one")).subquery("one")
            stmt = self._exchanges[key] = sa.select(
                sa.select(sa.func.array_agg(written.c.id)).scalar_subquery().label("written"),
                *c.c,
            ).select_from(one.outerjoin(c, sa.true()))
        params.update(self._result_params(rows, claim.now))
        return stmt, params

    def _claim_sends_stmt(self, special: tuple[str, ...]) -> Any:
        t = self.table
        e = self._alias_e
        now: sa.BindParameter[float] = sa.bindparam("now", type_=sa.Double())

        def due(c: Any) -> sa.ColumnElement[bool]:
            earlier = (
                sa.select(e.c.id)
                .where(
                    e.c.ordering_key == c.c.ordering_key,
                    e.c.id < c.c.id,
                    e.c.state.in_([str(s) for s in _BLOCKING]),
                )
                .exists()
            )
            return sa.and_(
                sa.or_(
                    sa.and_(c.c.state == str(State.PENDING), c.c.next_attempt_at <= now),
                    sa.and_(
                        c.c.state == str(State.DISPATCHING),
                        c.c.lease_until < now,
                        c.c.resend_safe == sa.true(),
                    ),
                ),
                c.c.dependency.in_(sa.bindparam("allowed", expanding=True)),
                sa.or_(c.c.ordering_key.is_(None), ~earlier),
            )

        # (no parameter is named after a column: in an UPDATE, SQLAlchemy would SET it)
        lease_until: Any = sa.bindparam("until", type_=sa.Double())
        if special:
            lease_until = sa.case(
                {
                    dep: sa.bindparam(f"until_{i}", type_=sa.Double())
                    for i, dep in enumerate(special)
                },
                value=t.c.dependency,
                else_=lease_until,
            )
        return self._claim(
            due,
            lambda c: c.c.next_attempt_at,
            sa.bindparam("claim_limit", type_=sa.Integer()),
            {
                "state": str(State.DISPATCHING),
                "lease_owner": sa.bindparam("owner", type_=sa.String()),
                "lease_token": t.c.lease_token + 1,
                "lease_until": lease_until,
                "attempts": t.c.attempts + 1,
                "updated_at": now,
            },
        )

    def claim_verifications(
        self, *, now: float, limit: int, owner: str, lease: float, allowed: Sequence[str]
    ) -> Any:
        """Unknown entries whose ``verify_at`` has come, not leased by another."""
        return self._claim_due(State.UNKNOWN, "verify_at", now, limit, owner, lease, allowed)

    def claim_compensations(
        self, *, now: float, limit: int, owner: str, lease: float, allowed: Sequence[str]
    ) -> Any:
        """Failed entries whose compensator is due, not leased by another."""
        return self._claim_due(State.FAILED, "compensate_at", now, limit, owner, lease, allowed)

    def _claim_due(
        self,
        state: State,
        when: str,
        now: float,
        limit: int,
        owner: str,
        lease: float,
        allowed: Sequence[str],
    ) -> Any:
        """Entries in *state* whose time in column *when* has come, not leased by another."""

        def due(c: Any) -> sa.ColumnElement[bool]:
            return sa.and_(
                c.c.state == state,
                c.c[when] <= now,
                c.c.dependency.in_(list(allowed)),
                sa.or_(c.c.lease_until.is_(None), c.c.lease_until < now),
            )

        return self._claim(due, lambda c: c.c[when], limit, self._lease(now, owner, lease))

    def claim_ids(
        self,
        *,
        ids: Sequence[int],
        states: Iterable[str],
        now: float,
        owner: str,
        lease: float,
    ) -> Any:
        """These entries (reconcile's picks), if still in *states* and not leased by another."""
        wanted = [str(s) for s in states]

        def due(c: Any) -> sa.ColumnElement[bool]:
            return sa.and_(
                c.c.id.in_(list(ids)),
                c.c.state.in_(wanted),
                sa.or_(c.c.lease_until.is_(None), c.c.lease_until < now),
            )

        return self._claim(due, lambda c: c.c.id, len(ids), self._lease(now, owner, lease))

    def _lease(self, now: float, owner: str, lease: float) -> dict[str, Any]:
        t = self.table
        return {
            "lease_owner": owner,
            "lease_token": t.c.lease_token + 1,
            "lease_until": now + lease,
            "updated_at": now,
        }

    def sweep_expired(self, *, now: float, verify_at: float | None) -> Any:
        """Expired leases on dependencies that ignore keys: the send may have happened."""
        t = self.table
        return (
            sa.update(t)
            .where(
                t.c.state == State.DISPATCHING,
                t.c.lease_until < now,
                t.c.resend_safe == sa.false(),
            )
            .values(
                state=State.UNKNOWN,
                verify_at=now if verify_at is None else verify_at,
                lease_owner=None,
                lease_until=None,
                lease_token=t.c.lease_token + 1,
                last_error="lease_expired: the dispatcher stopped mid-send",
                updated_at=now,
            )
            .returning(t.c.id, t.c.dependency, t.c.attempts)
        )

    # -- results --------------------------------------------------------------------

    def results(
        self, rows: Sequence[ResultRow], now: float
    ) -> tuple[sa.TextClause, dict[str, Any]]:
        """One fenced UPDATE for a group of results; RETURNING the ids still ours."""
        n = _padded(len(rows))
        sql = self._result_sql.get(n)
        if sql is None:
            sql = self._result_sql[n] = sa.text(self._results_sql(n))
        return sql, self._result_params(rows, now)

    @staticmethod
    def _result_params(rows: Sequence[ResultRow], now: float) -> dict[str, Any]:
        """The parameters of a group of results, padded to its statement's size with rows
        of NULLs (their id matches no row)."""
        params: dict[str, Any] = {"now": now}
        for i in range(len(rows), _padded(len(rows))):
            for name, _ in _RESULT_COLUMNS:
                params[f"{name}{i}"] = None
        for i, r in enumerate(rows):
            params[f"id{i}"] = r.id
            params[f"tok{i}"] = r.token
            params[f"state{i}"] = str(r.state)
            params[f"next_attempt_at{i}"] = r.next_attempt_at
            params[f"verify_at{i}"] = r.verify_at
            params[f"finished_at{i}"] = r.finished_at
            params[f"last_status{i}"] = r.last_status
            params[f"last_error{i}"] = r.last_error
            params[f"compensate_at{i}"] = r.compensate_at
            params[f"attention{i}"] = r.attention
            params[f"attention_reason{i}"] = r.attention_reason
            params[f"verify_attempts{i}"] = r.verify_attempts
            params[f"attempts{i}"] = r.attempts
        return params

    def _results_sql(self, n: int) -> str:
        t = self._quoted
        names = ", ".join(name for name, _ in _RESULT_COLUMNS)
        sets = (
            "state = v.state, next_attempt_at = v.next_attempt_at, verify_at = v.verify_at, "
            "finished_at = v.finished_at, last_status = v.last_status, "
            "last_error = v.last_error, compensate_at = v.compensate_at, "
            "verify_attempts = v.verify_attempts, "
            "lease_owner = NULL, lease_until = NULL, updated_at = :now"
        )
        if self.dialect == "postgresql":
            rows = ", ".join(
                "("
                + ", ".join(f"CAST(:{name}{i} AS {kind})" for name, kind in _RESULT_COLUMNS)
                + ")"
                for i in range(n)
            )
            return (
                f"UPDATE {t} AS o SET {sets}, "
                "attempts = COALESCE(v.attempts, o.attempts), "
                "needs_attention = o.needs_attention OR v.attention, "
                "attention_reason = COALESCE(v.attention_reason, o.attention_reason) "
                f"FROM (VALUES {rows}) AS v({names}) "
                "WHERE o.id = v.id AND o.lease_token = v.tok RETURNING o.id"
            )
        rows = ", ".join(
            "(" + ", ".join(f":{name}{i}" for name, _ in _RESULT_COLUMNS) + ")" for i in range(n)
        )
        return (
            f"WITH v({names}) AS (VALUES {rows}) "
            f"UPDATE {t} SET {sets}, "
            f"attempts = COALESCE(v.attempts, {t}.attempts), "
            f"needs_attention = ({t}.needs_attention OR v.attention), "
            f"attention_reason = COALESCE(v.attention_reason, {t}.attention_reason) "
            f"FROM v WHERE {t}.id = v.id AND {t}.lease_token = v.tok RETURNING {t}.id"
        )

    def fenced(self, entry_id: int, token: int, **values: Any) -> Any:
        """One fenced write (hooks run in its transaction)."""
        t = self.table
        return (
            sa.update(t)
            .where(t.c.id == entry_id, t.c.lease_token == token)
            .values(**values)
            .returning(t.c.id)
        )

    # -- operations -----------------------------------------------------------------

    def purge_page(self, *, cutoff: float, limit: int) -> Any:
        t = self.table
        c = self._alias_p
        page = (
            sa.select(c.c.id)
            .where(c.c.state.in_([str(s) for s in TERMINAL]), c.c.finished_at < cutoff)
            .limit(limit)
        )
        return sa.delete(t).where(t.c.id.in_(page))

    def counts(self) -> Any:
        """Entries, oldest creation time and attention flags, per dependency and state."""
        t = self.table
        return sa.select(
            t.c.dependency,
            t.c.state,
            sa.func.count(),
            sa.func.min(t.c.created_at),
            sa.func.sum(sa.case((t.c.needs_attention == sa.true(), 1), else_=0)),
        ).group_by(t.c.dependency, t.c.state)

    def row(self, entry_id: int) -> Any:
        t = self.table
        return sa.select(t).where(t.c.id == entry_id)
