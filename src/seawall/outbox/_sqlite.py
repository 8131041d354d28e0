"""SQLite set up as the outbox needs it: writers queue instead of failing."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["configure_sqlite"]


def configure_sqlite(
    engine: AsyncEngine, *, busy_timeout: float = 10.0, synchronous: str = "NORMAL"
) -> AsyncEngine:
    """Turn on WAL and a busy timeout on every connection *engine* opens; return it.

    With WAL, readers never block the writer; with ``busy_timeout`` (seconds),
    a writer that finds the database locked (the app's transaction, a
    dispatcher's result write) waits its turn instead of failing with
    "database is locked". ``synchronous="NORMAL"`` is WAL's usual pairing: no
    fsync at every commit (a commit survives the process crashing, not a power
    loss); ``"FULL"`` waits for the disk at each one.
    """
    if not isinstance(engine, AsyncEngine) or engine.dialect.name != "sqlite":
        raise TypeError(f"configure_sqlite(engine): must be a SQLite AsyncEngine, got {engine!r}")
    if (
        isinstance(busy_timeout, bool)
        or not isinstance(busy_timeout, int | float)
        or not math.isfinite(busy_timeout)
        or busy_timeout < 0
    ):
        raise ValueError(
            f"configure_sqlite(busy_timeout): must be a number of seconds >= 0, got {busy_timeout!r}"
        )
    mode = str(synchronous).upper()
    if mode not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ValueError(
            "configure_sqlite(synchronous): must be 'OFF', 'NORMAL', 'FULL' or 'EXTRA', "
            f"got {synchronous!r}"
        )
    milliseconds = round(busy_timeout * 1000)

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={milliseconds}")
        cursor.execute(f"PRAGMA synchronous={mode}")
        cursor.close()

    return engine
