"""Calls out while holding a database transaction: find them.

A handler that charges a card inside its transaction holds a pooled
connection (and row locks) for as long as the payment provider takes; when
the provider hangs, the pool drains and the whole app stops. ::

    seawall.db.watch(engine)                  # warn (SeawallWarning + a log event)
    seawall.db.watch(engine, action="error")  # raise CallInTransactionError

From then on a ResilientClient or guard call made by an asyncio task that
holds a transaction on *engine* warns or raises, at the call.
:func:`allow_calls_in_transaction` opts a block out. docs/transactions.md
shows the shapes that need no such call: commit first, or enqueue the call
in the transaction with :mod:`seawall.outbox`.

Tracking is by task, from the engine's ``begin``, ``commit`` and
``rollback`` events: SQLAlchemy runs event handlers in a copy of the
caller's context, so a contextvar set there would never flow back. SQLAlchemy
is imported only by :func:`watch`.
"""

from __future__ import annotations

import asyncio
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal

import structlog

from . import _engine
from ._exceptions import CallInTransactionError, SeawallWarning

__all__ = ["CallInTransactionError", "SeawallWarning", "allow_calls_in_transaction", "watch"]

_logger = structlog.get_logger("seawall")


Action = Literal["warn", "error"]

# Connections in a transaction: id(connection) -> (task, action, engine label).
_open: dict[int, tuple[asyncio.Task[Any], Action, str]] = {}
# Tasks holding at least one: task -> {id(connection)}.
_holders: weakref.WeakKeyDictionary[asyncio.Task[Any], set[int]] = weakref.WeakKeyDictionary()
_allowed: ContextVar[bool] = ContextVar("seawall_db_allowed", default=False)
_watched = 0


@contextmanager
def allow_calls_in_transaction() -> Iterator[None]:
    """Calls made inside this block are not reported, transaction or not.

    For the rare call that must be in the transaction (a lock service whose
    answer decides the commit, say), with the reason written beside it.
    """
    token = _allowed.set(True)
    try:
        yield
    finally:
        _allowed.reset(token)


def _task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running asyncio loop (trio, or sync code)
        return None


def _check(dependency: str) -> None:
    """The engine's call hook: runs as each guard or ResilientClient call starts."""
    task = _task()
    if task is None:
        return
    held = _holders.get(task)
    if not held or _allowed.get():
        return
    records = [_open[c] for c in held if c in _open]
    if not records:
        return
    error = any(action == "error" for _, action, _ in records)
    where = ", ".join(sorted({label for _, _, label in records}))
    message = (
        f"a call to {dependency!r} started while this task holds a database transaction "
        f"({where}): the connection stays checked out, and its locks held, for as long as "
        f"{dependency!r} takes. Commit first, or enqueue the call in the transaction with "
        "seawall.outbox (docs/transactions.md); seawall.db.allow_calls_in_transaction() "
        "opts a block out"
    )
    _logger.warning(
        "seawall.db.call_in_transaction",
        dependency=dependency,
        database=where,
        action="error" if error else "warn",
    )
    if error:
        raise CallInTransactionError(message, dependency=dependency)
    warnings.warn(message, SeawallWarning, stacklevel=4)


def watch(engine: Any, action: Action = "warn") -> Callable[[], None]:
    """Report calls out made while a task holds a transaction on *engine*.

    *engine* is a SQLAlchemy ``AsyncEngine`` (or ``Engine``). ``action``:
    ``"warn"`` (a :class:`SeawallWarning` and a ``seawall.db.call_in_transaction``
    log event) or ``"error"`` (:class:`CallInTransactionError`, raised at the
    call, before anything is sent). Returns a function that stops watching.
    """
    global _watched
    if action not in ("warn", "error"):
        raise ValueError(f'seawall.db.watch(action): must be "warn" or "error", got {action!r}')
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    sync = getattr(engine, "sync_engine", engine)
    if not isinstance(sync, Engine):
        raise TypeError(
            f"seawall.db.watch(engine): must be a SQLAlchemy AsyncEngine or Engine, got {engine!r}"
        )
    label = sync.url.render_as_string(hide_password=True)

    def begin(conn: Any) -> None:
        task = _task()
        if task is None:
            return
        key = id(conn)
        _open[key] = (task, action, label)
        held = _holders.get(task)
        if held is None:
            held = _holders[task] = set()
        held.add(key)

    def end(conn: Any) -> None:
        found = _open.pop(id(conn), None)
        if found is not None:
            held = _holders.get(found[0])
            if held is not None:
                held.discard(id(conn))

    event.listen(sync, "begin", begin)
    event.listen(sync, "commit", end)
    event.listen(sync, "rollback", end)
    if _check not in _engine.call_hooks:
        _engine.call_hooks.append(_check)
    _watched += 1
    stopped = False

    def stop() -> None:
        global _watched
        nonlocal stopped
        if stopped:
            return
        stopped = True
        event.remove(sync, "begin", begin)
        event.remove(sync, "commit", end)
        event.remove(sync, "rollback", end)
        _watched -= 1
        if not _watched and _check in _engine.call_hooks:
            _engine.call_hooks.remove(_check)

    return stop
