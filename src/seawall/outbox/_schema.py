"""The outbox table: columns and indexes (public API: Alembic migrations build on it).

Times are ``DOUBLE PRECISION`` seconds on the outbox's clock: seconds since
the epoch (UTC) by default. JSON columns are text holding JSON.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["COLUMNS", "outbox_table"]

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: the rowid itself

#: Every column, with what it holds (docs/outbox.md shows this table).
COLUMNS: dict[str, str] = {
    "id": "the entry's id (autoincrement)",
    "dependency": "the registry dependency it is sent to",
    "method": "the HTTP method",
    "path": "the path (and query) relative to the dependency's base URL",
    "headers": "JSON object of the request headers stored (never a credential)",
    "body": "the request body, bytes (NULL: none)",
    "fingerprint": "SHA-256 of method, path and body: tells a repeat from a reused key",
    "idempotency_key": "the key sent with every attempt; unique per dependency",
    "ordering_key": "entries sharing it are sent one at a time, in id order",
    "state": "pending, dispatching, succeeded, unknown, failed, compensated, cancelled",
    "resend_safe": "the dependency honours keys: an expired lease may be resent",
    "attempts": "sends claimed so far",
    "created_at": "when it was enqueued",
    "updated_at": "when the row last changed",
    "next_attempt_at": "pending: when it may be claimed",
    "lease_owner": "the dispatcher holding it (host:pid:random)",
    "lease_token": "bumped by every claim and every manual change: fences result writes",
    "lease_until": "the lease's end",
    "verify_at": "unknown: when to verify (NULL: waits for reconcile or a person)",
    "verify_attempts": "verifications so far",
    "compensate_at": "failed: when its compensator is due (NULL: none due)",
    "compensate_attempts": "compensator runs that raised",
    "finished_at": "when it reached succeeded, failed, compensated or cancelled",
    "last_status": "the last HTTP status seen",
    "last_error": "the last error, one line (never a credential)",
    "needs_attention": "a person must look (a hook raised, a compensator gave up, ...)",
    "attention_reason": "why",
    "trace_context": "JSON of the enqueue span's W3C trace context (traceparent)",
    "metadata": "JSON given to enqueue(metadata=...)",
}


def outbox_table(metadata: sa.MetaData, name: str = "seawall_outbox") -> sa.Table:
    """The outbox's :class:`sqlalchemy.Table`, added to *metadata* (for Alembic).

    ::

        from seawall.outbox import outbox_table
        outbox_table(Base.metadata)          # then: alembic revision --autogenerate

    Indexes: a unique one on ``(dependency, idempotency_key)``; ``(state,
    next_attempt_at)`` for claims; ``(ordering_key, id)`` for ordered entries;
    ``(state, finished_at)`` for retention.
    """
    if not isinstance(name, str) or not name.replace("_", "").isalnum():
        raise ValueError(
            f"outbox_table(name): must be letters, digits and underscores, got {name!r}"
        )
    zero = sa.text("0")
    return sa.Table(
        name,
        metadata,
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("dependency", sa.String(200), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("headers", sa.Text(), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("ordering_key", sa.String(255), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("resend_safe", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=zero),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("next_attempt_at", sa.Double(), nullable=True),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_token", sa.Integer(), nullable=False, server_default=zero),
        sa.Column("lease_until", sa.Double(), nullable=True),
        sa.Column("verify_at", sa.Double(), nullable=True),
        sa.Column("verify_attempts", sa.Integer(), nullable=False, server_default=zero),
        sa.Column("compensate_at", sa.Double(), nullable=True),
        sa.Column("compensate_attempts", sa.Integer(), nullable=False, server_default=zero),
        sa.Column("finished_at", sa.Double(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("needs_attention", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("attention_reason", sa.Text(), nullable=True),
        sa.Column("trace_context", sa.Text(), nullable=True),
        sa.Column("metadata", sa.Text(), nullable=True),
        sa.UniqueConstraint("dependency", "idempotency_key", name=f"uq_{name}_key"),
        sa.Index(f"ix_{name}_due", "state", "next_attempt_at"),
        sa.Index(
            f"ix_{name}_ordering",
            "ordering_key",
            "id",
            postgresql_where=sa.text("ordering_key IS NOT NULL"),
            sqlite_where=sa.text("ordering_key IS NOT NULL"),
        ),
        sa.Index(f"ix_{name}_finished", "state", "finished_at"),
    )
