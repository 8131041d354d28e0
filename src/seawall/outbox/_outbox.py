"""Outbox: enqueue external calls inside the user's transaction; dispatch them later."""

from __future__ import annotations

import hashlib
import json as jsonlib
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpx
import sniffio
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from .._clock import Clock
from .._registry import Registry
from . import _telemetry as tel
from ._route import DEFAULT_ROUTE, OutboxRoute
from ._schema import outbox_table
from ._sql import Statements
from ._types import (
    EnqueuedCall,
    Entry,
    Failure,
    IdempotencyKeyReusedError,
    OutboxError,
    State,
    Verdict,
    WallClock,
)

if TYPE_CHECKING:
    from ._dispatcher import Dispatcher
    from ._ops import ReconcileReport

__all__ = ["MAX_BODY", "Outbox", "require_asyncio"]

#: The largest body stored by default (1 MiB).
MAX_BODY = 1 << 20
#: Headers never stored, whatever the settings: credentials come from the client at send time.
ALWAYS_SECRET = frozenset({"authorization", "proxy-authorization", "cookie"})
_WAKE_KEY = "seawall.outbox.wake"

Verifier = Callable[[Entry, Any], Awaitable[Verdict]]
Compensator = Callable[[Entry, Failure, AsyncSession], Awaitable[Any]]
SuccessHook = Callable[[Entry, Any, AsyncSession], Awaitable[Any]]
Reconciler = Callable[[list[Entry], Any], Awaitable[Mapping[int, Verdict]]]
F = TypeVar("F", bound=Callable[..., Any])


def require_asyncio(what: str) -> None:
    """SQLAlchemy's async layer runs on asyncio only: say so plainly under trio."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return
    if library != "asyncio":
        raise OutboxError(
            f"{what}: the outbox runs on asyncio only (SQLAlchemy's async layer has no "
            f"{library} support); run it under asyncio, e.g. anyio.run(..., backend='asyncio')"
        )


def _wake_after_commit(session: Session) -> None:
    wakes = session.info.pop(_WAKE_KEY, None)
    if wakes:
        for outbox in wakes:
            outbox._wake()


def _forget_wakes(session: Session, *args: Any) -> None:
    session.info.pop(_WAKE_KEY, None)


_listening = False


def _listen_commits() -> None:
    """One class-level listener: a commit of any session that enqueued wakes the dispatchers."""
    global _listening
    if not _listening:
        event.listen(Session, "after_commit", _wake_after_commit)
        event.listen(Session, "after_rollback", _forget_wakes)
        _listening = True


class Outbox:
    """A transactional outbox: external calls enqueued in your transaction, sent after it commits.

    ::

        outbox = Outbox(registry, engine)            # an AsyncEngine: PostgreSQL or SQLite
        async with session.begin():
            session.add(order)
            await outbox.enqueue(session, "payments", "POST", "/v1/charges", json=charge)
        # committed: a dispatcher sends it, with the entry's idempotency key

    ``registry`` supplies each dependency's ResilientClient (its policy,
    breaker and credentials); ``table`` is the table's name or a
    :func:`outbox_table`; ``clock`` (wall-clock seconds by default: every
    dispatcher host must agree on it) times entries, leases and backoffs.
    """

    def __init__(
        self,
        registry: Registry,
        engine: AsyncEngine,
        *,
        table: str | sa.Table = "seawall_outbox",
        clock: Clock | None = None,
        max_body: int = MAX_BODY,
        sensitive_headers: tuple[str, ...] | list[str] = (),
        session_factory: Callable[[], AsyncSession] | None = None,
    ) -> None:
        if not isinstance(registry, Registry):
            raise TypeError(f"Outbox(registry): must be a seawall.Registry, got {registry!r}")
        if not isinstance(engine, AsyncEngine):
            raise TypeError(
                f"Outbox(engine): must be a SQLAlchemy AsyncEngine (create_async_engine), got {engine!r}"
            )
        dialect = engine.dialect.name
        if dialect not in ("postgresql", "sqlite"):
            raise OutboxError(
                f"Outbox(engine): the outbox supports PostgreSQL and SQLite, got {dialect!r}"
            )
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 0:
            raise ValueError(f"Outbox(max_body): must be a number of bytes >= 0, got {max_body!r}")
        names = tuple(sensitive_headers)
        if not all(isinstance(n, str) and n for n in names):
            raise ValueError(
                f"Outbox(sensitive_headers): must be a list of header names, got {sensitive_headers!r}"
            )
        self.registry = registry
        self.engine = engine
        self.table: sa.Table = (
            table if isinstance(table, sa.Table) else outbox_table(sa.MetaData(), table)
        )
        self.clock: Clock = clock or WallClock()
        self.max_body = max_body
        self._secret = ALWAYS_SECRET | {n.lower() for n in names}
        self._stmts = Statements(self.table, engine.dialect)
        # Single statements (claims, grouped result writes) need no BEGIN and COMMIT:
        # one round trip each instead of three.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._session_factory: Callable[[], AsyncSession] = session_factory or async_sessionmaker(
            engine, expire_on_commit=False
        )
        self._overrides: dict[str, dict[str, Any]] = {}
        self._settings: dict[str | None, tuple[object, OutboxRoute]] = {}
        self._verifiers: dict[str, Verifier] = {}
        self._compensators: dict[str, Compensator] = {}
        self._on_success: dict[str, SuccessHook] = {}
        self._reconcilers: dict[str, Reconciler] = {}
        self._wakers: list[Callable[[], None]] = []
        _listen_commits()
        # The registry's snapshot (and the status endpoint) shows the last counts.
        parts = getattr(registry, "snapshot_parts", None)
        if parts is not None:
            key = "outbox" if "outbox" not in parts else f"outbox.{self.table.name}"
            parts[key] = self._snapshot

    def __repr__(self) -> str:
        return f"<Outbox table={self.table.name!r} {self.engine.dialect.name}>"

    # -- settings and hooks ---------------------------------------------------------

    def route(self, dependency: str, **settings: Any) -> OutboxRoute:
        """Set how *dependency* is sent (see :class:`OutboxRoute`); returns the result.

        Settings given here win, key by key, over the configuration file's
        ``[dependencies.NAME.outbox]`` table.
        """
        self.registry.client(dependency)  # LookupError for an unknown or non-HTTP dependency
        merged = {**self._overrides.get(dependency, {}), **settings}
        route = self._file_route(dependency).updated(**merged)  # validates
        self._overrides[dependency] = merged
        self._settings.pop(dependency, None)
        return route

    def _file_route(self, dependency: str | None) -> OutboxRoute:
        if dependency is None or dependency not in self.registry:
            return DEFAULT_ROUTE
        found = getattr(self.registry.spec(dependency), "outbox", None)
        return found if isinstance(found, OutboxRoute) else DEFAULT_ROUTE

    def settings(self, dependency: str | None) -> OutboxRoute:
        """The settings *dependency* is sent with: code over file over defaults."""
        spec = (
            self.registry.spec(dependency)
            if dependency is not None and dependency in self.registry
            else None
        )
        cached = self._settings.get(dependency)
        if cached is not None and cached[0] is spec:
            return cached[1]
        route = self._file_route(dependency)
        overrides = self._overrides.get(dependency) if dependency is not None else None
        if overrides:
            route = route.updated(**overrides)
        self._settings[dependency] = (spec, route)
        return route

    def _hook(self, table: dict[str, Any], kind: str, dependency: str) -> Callable[[F], F]:
        if not isinstance(dependency, str) or not dependency:
            raise ValueError(
                f"outbox.{kind}(dependency): must be a dependency name, got {dependency!r}"
            )

        def register(fn: F) -> F:
            if not callable(fn):
                raise TypeError(
                    f"outbox.{kind}({dependency!r}): must decorate a function, got {fn!r}"
                )
            table[dependency] = fn
            return fn

        return register

    def verifier(self, dependency: str) -> Callable[[F], F]:
        """Register ``async def verify(entry, client) -> Verdict`` for *dependency*.

        It runs ``verify_delay`` after an unknown outcome (then with backoff)
        with the dependency's ResilientClient; an exception counts as
        ``Verdict.unknown()``.
        """
        return self._hook(self._verifiers, "verifier", dependency)

    def compensator(self, dependency: str) -> Callable[[F], F]:
        """Register ``async def compensate(entry, failure, session)`` for *dependency*.

        It runs once per failed entry, in the transaction that marks it
        ``compensated``: what it enqueues there (a refund, an e-mail) commits
        with it. If it raises, it is retried with backoff, then the entry is
        flagged ``needs_attention``.
        """
        return self._hook(self._compensators, "compensator", dependency)

    def on_success(self, dependency: str) -> Callable[[F], F]:
        """Register ``async def hook(entry, response, session)``, run in the transaction
        that marks an entry ``succeeded``. If it raises, the entry is still
        ``succeeded`` (it happened upstream), flagged ``needs_attention``, never resent.
        """
        return self._hook(self._on_success, "on_success", dependency)

    def reconciler(self, dependency: str) -> Callable[[F], F]:
        """Register ``async def reconcile(entries, client) -> dict[id, Verdict]``:
        ``seawall outbox reconcile`` hands it stale unknown entries in batches
        (a provider-level check, such as a settlement report)."""
        return self._hook(self._reconcilers, "reconciler", dependency)

    # -- schema ---------------------------------------------------------------------

    async def create_schema(self) -> None:
        """Create the table and its indexes if missing (quick starts, tests; Alembic otherwise)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(lambda sync: self.table.create(sync, checkfirst=True))

    # -- enqueue --------------------------------------------------------------------

    async def enqueue(
        self,
        session: AsyncSession | AsyncConnection,
        dependency: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        ordering_key: str | None = None,
        not_before: datetime | timedelta | float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> EnqueuedCall:
        """Add one INSERT for a call to *dependency* to *session*'s current transaction.

        Nothing else: no commit, no flush, no other round trip. The call is
        sent after the transaction commits, and never if it rolls back.
        ``idempotency_key`` defaults to a UUID4; enqueuing the same key again
        (same method, path and body) returns the existing entry with
        ``created=False``; another request under the same key raises
        :class:`IdempotencyKeyReusedError`. Either way the transaction stays
        usable. Credentials are never stored: ``Authorization``,
        ``Proxy-Authorization``, ``Cookie`` and the ``sensitive_headers`` are
        refused; the dependency's client adds its own at send time.
        """
        require_asyncio("Outbox.enqueue")
        if not isinstance(session, AsyncSession | AsyncConnection):
            raise TypeError(
                f"Outbox.enqueue(session): must be an AsyncSession or AsyncConnection, got {session!r}"
            )
        row = self._row(
            dependency,
            method,
            path,
            json=json,
            content=content,
            headers=headers,
            idempotency_key=idempotency_key,
            ordering_key=ordering_key,
            not_before=not_before,
            metadata=metadata,
        )
        with tel.enqueue_span(dependency) as span:
            row["trace_context"] = span.carrier
            result = await session.execute(self._stmts.insert, row)
            inserted: int | None
            if self._stmts.insert_returns:
                inserted = result.scalar()
            else:  # SQLite: ON CONFLICT DO NOTHING changed 0 rows, or 1 (its rowid)
                found = cast("CursorResult[Any]", result)
                key = found.inserted_primary_key if found.rowcount == 1 else None
                inserted = None if key is None else int(key[0])
            created = inserted is not None
            entry_id = await self._existing(session, row) if inserted is None else int(inserted)
            span.created(entry_id, created)
        if created and isinstance(session, AsyncSession):
            session.sync_session.info.setdefault(_WAKE_KEY, set()).add(self)
        return EnqueuedCall(entry_id, row["idempotency_key"], created)

    async def _existing(self, session: AsyncSession | AsyncConnection, row: dict[str, Any]) -> int:
        found = (
            await session.execute(
                self._stmts.existing,
                {"dependency": row["dependency"], "idempotency_key": row["idempotency_key"]},
            )
        ).first()
        if found is None:
            raise OutboxError(
                f"Outbox.enqueue: an entry with idempotency key {row['idempotency_key']!r} for "
                f"{row['dependency']!r} was enqueued by a transaction this one cannot see "
                "(it committed after this one began); retry the transaction",
                dependency=row["dependency"],
            )
        if found.fingerprint != row["fingerprint"]:
            raise IdempotencyKeyReusedError(
                f"idempotency key {row['idempotency_key']!r} of {row['dependency']!r} was "
                f"enqueued before (entry {found.id}) for another request (method, path or "
                "body differ); use a new key for a new request",
                dependency=row["dependency"],
                key=row["idempotency_key"],
                existing_id=found.id,
            )
        return int(found.id)

    def _row(
        self,
        dependency: str,
        method: str,
        path: str,
        *,
        json: Any,
        content: bytes | str | None,
        headers: Mapping[str, str] | None,
        idempotency_key: str | None,
        ordering_key: str | None,
        not_before: datetime | timedelta | float | None,
        metadata: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """The row to insert, every argument checked (errors name the argument and value)."""
        try:
            client = self.registry.client(dependency)
        except LookupError as exc:
            raise LookupError(f"Outbox.enqueue(dependency): {exc}") from None
        route = self.settings(dependency)
        if not isinstance(method, str) or not method.isalpha() or len(method) > 16:
            raise ValueError(f"Outbox.enqueue(method): must be an HTTP method, got {method!r}")
        method = method.upper()
        path = self._relative(dependency, client, path)
        stored = self._headers(dependency, client, route, headers)
        body: bytes | None
        if json is not None:
            if content is not None:
                raise ValueError("Outbox.enqueue: give json= or content=, not both")
            try:
                body = jsonlib.dumps(json, separators=(",", ":"), allow_nan=False).encode()
            except (TypeError, ValueError) as exc:
                raise ValueError(f"Outbox.enqueue(json): must be JSON data ({exc})") from None
            if not any(k.lower() == "content-type" for k in stored):
                stored["Content-Type"] = "application/json"
        elif isinstance(content, str):
            body = content.encode()
        elif content is None or isinstance(content, bytes):
            body = content
        else:
            raise TypeError(
                f"Outbox.enqueue(content): must be bytes or str, got {type(content).__name__}"
            )
        if body is not None and len(body) > self.max_body:
            raise ValueError(
                f"Outbox.enqueue: the body is {len(body)} bytes, over the outbox's max_body "
                f"({self.max_body}); store large payloads elsewhere and send a reference"
            )
        key = _checked_key("idempotency_key", idempotency_key) or str(uuid.uuid4())
        if ordering_key is not None:
            _checked_key("ordering_key", ordering_key)
        now = self.clock.now()
        due = now if not_before is None else max(now, self._when(not_before, now))
        meta = None
        if metadata is not None:
            if not isinstance(metadata, Mapping):
                raise TypeError(f"Outbox.enqueue(metadata): must be a mapping, got {metadata!r}")
            try:
                meta = jsonlib.dumps(dict(metadata), separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"Outbox.enqueue(metadata): must be JSON data ({exc})") from None
        digest = hashlib.sha256(method.encode() + b"\n" + path.encode() + b"\n" + (body or b""))
        return {
            "dependency": dependency,
            "method": method,
            "path": path,
            "headers": jsonlib.dumps(stored, separators=(",", ":")) if stored else None,
            "body": body,
            "fingerprint": digest.hexdigest(),
            "idempotency_key": key,
            "ordering_key": ordering_key,
            "state": State.PENDING.value,
            "resend_safe": route.honours_idempotency_key,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
            "next_attempt_at": due,
            "lease_token": 0,
            "verify_attempts": 0,
            "compensate_attempts": 0,
            "needs_attention": False,
            "metadata": meta,
        }

    @staticmethod
    def _when(value: datetime | timedelta | float, now: float) -> float:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError(
                    f"Outbox.enqueue(not_before): must be an aware datetime (with a timezone), got {value!r}"
                )
            return value.timestamp()
        if isinstance(value, timedelta):
            return now + value.total_seconds()
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(
                f"Outbox.enqueue(not_before): must be a datetime, a timedelta or a time on the "
                f"outbox's clock, got {value!r}"
            )
        return float(value)

    def _relative(self, dependency: str, client: Any, path: str) -> str:
        if not isinstance(path, str) or not path or not path.isprintable() or " " in path:
            raise ValueError(
                f"Outbox.enqueue(path): must be a path such as /v1/charges, got {path!r}"
            )
        if path.startswith(("http://", "https://")):
            bases = list(self.registry.spec(dependency).endpoints) or [str(client.base_url)]
            for base in bases:
                prefix = str(httpx.URL(base)).rstrip("/")
                if path == prefix or path.startswith(prefix + "/"):
                    return path[len(prefix) :] or "/"
            raise ValueError(
                f"Outbox.enqueue(path): {path!r} is not under the base URL of {dependency!r}; "
                "give a path relative to it"
            )
        if not path.startswith("/"):
            raise ValueError(f"Outbox.enqueue(path): must start with '/', got {path!r}")
        return path

    def _headers(
        self,
        dependency: str,
        client: Any,
        route: OutboxRoute,
        headers: Mapping[str, str] | None,
    ) -> dict[str, str]:
        if headers is None:
            return {}
        if not isinstance(headers, Mapping):
            raise TypeError(
                f"Outbox.enqueue(headers): must be a mapping, got {type(headers).__name__}"
            )
        secret = self._secret | {n.lower() for n in route.sensitive_headers}
        keys = {n.lower() for n in client.policy.idempotency_headers}
        stored: dict[str, str] = {}
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError(
                    f"Outbox.enqueue(headers): names and values must be strings, got {name!r}"
                )
            lower = name.lower()
            if lower in secret:
                raise ValueError(
                    f"Outbox.enqueue(headers): {name!r} is never stored in the outbox; the "
                    f"client of {dependency!r} adds credentials at send time (configure them "
                    "on the dependency: headers, auth)"
                )
            if lower in keys:
                raise ValueError(
                    f"Outbox.enqueue(headers): {name!r} is the idempotency key header; "
                    "pass idempotency_key= instead"
                )
            if lower in ("traceparent", "tracestate"):
                continue  # the dispatch span's context goes out instead
            stored[name] = value
        return stored

    # -- cancel ---------------------------------------------------------------------

    async def cancel(self, session: AsyncSession | AsyncConnection, entry_id: int) -> bool:
        """Cancel a pending entry in *session*'s transaction; False if it is not pending."""
        require_asyncio("Outbox.cancel")
        found = (
            await session.execute(
                self._stmts.cancel, {"entry_id": entry_id, "now": self.clock.now()}
            )
        ).first()
        return found is not None

    # -- dispatching ----------------------------------------------------------------

    def dispatcher(
        self,
        *,
        concurrency: int = 8,
        batch_size: int = 32,
        poll_interval: float = 1.0,
        retention: float = 7 * 86400.0,
        purge_interval: float = 3600.0,
        counts_interval: float = 15.0,
        flush_interval: float = 0.01,
    ) -> Dispatcher:
        """A dispatcher: ``async with outbox.dispatcher():`` runs it in the background."""
        from ._dispatcher import Dispatcher

        return Dispatcher(
            self,
            concurrency=concurrency,
            batch_size=batch_size,
            poll_interval=poll_interval,
            retention=retention,
            purge_interval=purge_interval,
            counts_interval=counts_interval,
            flush_interval=flush_interval,
        )

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """A lifespan running a dispatcher beside the app (``lifespan=outbox.lifespan``)."""
        async with self.dispatcher():
            yield

    def _wake(self) -> None:
        for wake in list(self._wakers):
            wake()

    def _snapshot(self) -> dict[str, Any]:
        """The registry snapshot's part: the last grouped COUNT a dispatcher made (no query)."""
        found = tel.counts_of(self)
        if found is None:
            return {"table": self.table.name, "counted_ago": None, "dependencies": {}}
        _, when, counts = found
        deps: dict[str, dict[str, Any]] = {}
        for (dependency, state), (n, oldest) in sorted(counts.items()):
            deps.setdefault(dependency, {})[state] = {
                "count": n,
                "oldest_age": None if oldest is None else round(max(0.0, when - oldest), 3),
            }
        return {
            "table": self.table.name,
            "counted_ago": round(max(0.0, self.clock.now() - when), 3),
            "dependencies": deps,
        }

    # -- operations -------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """Counts, oldest ages and attention flags per dependency and state."""
        from ._ops import status

        return await status(self)

    async def get(self, entry_id: int) -> dict[str, Any] | None:
        """Every column of entry *entry_id* (None if there is none)."""
        from ._ops import get

        return await get(self, entry_id)

    async def retry(self, entry_id: int) -> bool:
        """Make a failed, unknown or cancelled entry pending again, now, attempts reset."""
        from ._ops import retry

        return await retry(self, entry_id)

    async def resolve(self, entry_id: int, outcome: str) -> bool:
        """Settle an unknown entry by hand: ``succeeded``, ``failed`` or ``resend``."""
        from ._ops import resolve

        return await resolve(self, entry_id, outcome)

    async def purge(self, older_than: float, *, page: int = 1000) -> int:
        """Delete succeeded, compensated and cancelled entries finished over *older_than*
        seconds ago, in pages of *page* rows (one transaction each); returns the count."""
        from ._ops import purge

        return await purge(self, older_than, page=page)

    async def reconcile(
        self,
        *,
        older_than: float = 3600.0,
        dependency: str | None = None,
        dry_run: bool = False,
    ) -> ReconcileReport:
        """The daily batch correction (``seawall outbox reconcile``): see docs/outbox.md."""
        from ._ops import reconcile

        return await reconcile(self, older_than=older_than, dependency=dependency, dry_run=dry_run)


def _checked_key(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value
        or len(value) > 255
        or not value.isascii()
        or not value.isprintable()
        or '"' in value
        or "\\" in value
    ):
        raise ValueError(
            f"Outbox.enqueue({name}): must be 1 to 255 printable ASCII characters without "
            f"quotes or backslashes, got {value!r}"
        )
    return value
