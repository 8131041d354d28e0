"""seawall.outbox: external calls that survive crashes (the transactional outbox).

Enqueue a call in the same transaction as the data it belongs to; a
dispatcher sends it after the commit, with an idempotency key, through the
dependency's ResilientClient, and records what came of it: ``succeeded``,
``pending`` (again, after a backoff), ``unknown`` (verify it), ``failed``
(compensate it). See docs/outbox.md.

Needs ``seawall[outbox]`` (SQLAlchemy's asyncio extra and aiosqlite) or
``seawall[outbox-postgres]`` (asyncpg too). The settings, verdicts and errors
below import without SQLAlchemy; ``Outbox`` and ``outbox_table`` need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..db import CallInTransactionError
from ._route import OutboxRoute, parse_duration
from ._types import (
    EnqueuedCall,
    Entry,
    Failure,
    IdempotencyKeyReusedError,
    OutboxError,
    State,
    Verdict,
    VerdictKind,
    WallClock,
)

if TYPE_CHECKING:
    from ._dispatcher import CycleReport, Dispatcher
    from ._ops import ReconcileReport
    from ._outbox import Outbox
    from ._schema import outbox_table
    from ._sqlite import configure_sqlite

__all__ = [
    "CallInTransactionError",
    "CycleReport",
    "Dispatcher",
    "EnqueuedCall",
    "Entry",
    "Failure",
    "IdempotencyKeyReusedError",
    "Outbox",
    "OutboxError",
    "OutboxRoute",
    "ReconcileReport",
    "State",
    "Verdict",
    "VerdictKind",
    "WallClock",
    "configure_sqlite",
    "outbox_table",
    "parse_duration",
]

_LAZY = {
    "Outbox": "._outbox",
    "outbox_table": "._schema",
    "configure_sqlite": "._sqlite",
    "Dispatcher": "._dispatcher",
    "CycleReport": "._dispatcher",
    "ReconcileReport": "._ops",
}


def __getattr__(name: str) -> Any:
    # SQLAlchemy is an extra: it is imported only when these are asked for.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'seawall.outbox' has no attribute {name!r}")
    import importlib

    try:
        found = importlib.import_module(module, __name__)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] in ("sqlalchemy", "greenlet"):
            raise ImportError(
                f"seawall.outbox.{name} needs SQLAlchemy's asyncio extra: "
                "pip install 'seawall[outbox]' (SQLite) or 'seawall[outbox-postgres]' (PostgreSQL)",
                name=exc.name,
            ) from exc
        raise
    return getattr(found, name)
