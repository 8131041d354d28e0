"""The shop's logic, with no web framework in it: both example apps call these.

Orders live in a database (SQLite by default, ``DATABASE_URL``) through
SQLAlchemy's AsyncSession, and every call that changes something upstream
goes through seawall's transactional outbox (``seawall.outbox``):

* payments: ``POST /pay`` writes the order (``accepted``) and enqueues its
  charge in ONE transaction, then answers 202 at once. A dispatcher sends the
  charge after the commit, with the order id as its Idempotency-Key, and
  records what came of it. A charge whose outcome is unknown (the provider
  hung) is checked with the provider's status API (:func:`verify_payment`); a
  charge that failed after the order was accepted is compensated: the order
  is cancelled and the provider's cancel API called (:func:`compensate_payment`);
* notifications: best effort, enqueued in the transaction that marks the
  order paid, sent at most once (the mailer ignores idempotency keys);
* catalog: a read, answered from the last good response when the catalog
  fails (``fallback.stale_if_error``), and the answer says so.

No handler calls out while it holds a transaction, and the payments
provider being slow or down never slows ``/pay``: the charge waits in the
outbox. Each function returns an :class:`Answer` (status, JSON body,
headers) that the app turns into its framework's response.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import sqlalchemy as sa
import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import seawall
import seawall.asgi
import seawall.db
from seawall.outbox import (
    Entry,
    Failure,
    Outbox,
    OutboxError,
    Verdict,
    configure_sqlite,
    outbox_table,
)

__all__ = [
    "ACCEPTED",
    "CALL_ERRORS",
    "CANCELLED",
    "DEFAULT_DATABASE_URL",
    "NEEDS_ATTENTION",
    "ORDER_ID_PATTERN",
    "OUTBOX_TABLE",
    "PAID",
    "Answer",
    "Base",
    "Order",
    "OrderRecord",
    "build_outbox",
    "compensate_payment",
    "create_engine",
    "create_schema",
    "database",
    "database_url",
    "get_order",
    "list_catalog",
    "order_status",
    "paid",
    "pay",
    "transport_error_problem",
    "verify_payment",
]

log = structlog.get_logger("shop")

#: What an order id looks like; it becomes part of a URL path and a header.
ORDER_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

#: Where the orders (and the outbox) live unless ``DATABASE_URL`` says otherwise:
#: ``shop.db`` in the working directory.
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///shop.db"

#: Errors a call can end in (seawall's rejections and timeouts, httpx's transport errors).
CALL_ERRORS = (seawall.SeawallError, TimeoutError, httpx.TransportError)

# An order's status: accepted (its charge is in the outbox), then paid or
# cancelled; needs_attention when only a person can settle it.
ACCEPTED = "accepted"
PAID = "paid"
CANCELLED = "cancelled"
NEEDS_ATTENTION = "needs_attention"

# What an outbox entry of payments is, in its metadata.
CHARGE = "charge"
CANCEL = "cancel"


@dataclass(frozen=True, slots=True)
class Answer:
    """What to answer the shop's client: a status, a JSON body and headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class Order:
    order_id: str
    amount_cents: int
    currency: str = "EUR"
    email: str | None = None


# -- the database ---------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class OrderRecord(Base):
    """An order, as the shop keeps it."""

    __tablename__ = "orders"

    order_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    amount_cents: Mapped[int]
    currency: Mapped[str] = mapped_column(sa.String(3))
    email: Mapped[str | None]
    status: Mapped[str] = mapped_column(sa.String(20))
    #: The provider's charge id, once paid.
    charge_id: Mapped[str | None]
    #: Why the order is where it is (a cancellation's reason, ...).
    detail: Mapped[str | None]
    #: The outbox entries of its charge, its cancellation and its notification.
    charge_entry: Mapped[int | None]
    cancel_entry: Mapped[int | None]
    notification_entry: Mapped[int | None]


#: seawall's outbox table, in the same metadata as the orders: created with them
#: here (:func:`create_schema`), by Alembic in a real project.
OUTBOX_TABLE = outbox_table(Base.metadata)


def database_url(environ: Mapping[str, str] | None = None) -> str:
    """``DATABASE_URL`` if set, else :data:`DEFAULT_DATABASE_URL` (``shop.db`` here)."""
    environ = os.environ if environ is None else environ
    return environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def create_engine(url: str) -> AsyncEngine:
    """An AsyncEngine for *url*; on SQLite with WAL and a busy timeout, as the outbox
    needs (the app's transactions and the dispatcher's writes queue, never fail)."""
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        configure_sqlite(engine)
    return engine


async def create_schema(engine: AsyncEngine) -> None:
    """Create the orders and the outbox's table if missing (Alembic's job in a real project)."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


@asynccontextmanager
async def database(engine: AsyncEngine) -> AsyncIterator[None]:
    """The app's database for its lifetime: tables created, calls made inside a
    transaction warned about, the engine disposed at the end (enter it before
    the outbox's dispatcher, so that the dispatcher stops first)."""
    await create_schema(engine)
    unwatch = seawall.db.watch(engine)
    try:
        yield
    finally:
        unwatch()
        await engine.dispose()


def _session(outbox: Outbox) -> AsyncSession:
    return AsyncSession(outbox.engine, expire_on_commit=False)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


# -- the outbox and its hooks ----------------------------------------------------------


def build_outbox(
    registry: seawall.Registry, engine: AsyncEngine, *, clock: seawall.Clock | None = None
) -> Outbox:
    """The shop's outbox, its hooks registered (routes come from ``resilience.toml``).

    ``clock`` is the outbox's (wall-clock seconds by default; tests pass a
    ``seawall.testing.ManualClock``).
    """
    outbox = Outbox(registry, engine, table=OUTBOX_TABLE, clock=clock)

    @outbox.verifier("payments")
    async def _verify(entry: Entry, client: seawall.ResilientClient) -> Verdict:
        return await verify_payment(entry, client)

    @outbox.on_success("payments")
    async def _succeeded(entry: Entry, response: Any, session: AsyncSession) -> None:
        await paid(outbox, entry, response, session)

    @outbox.compensator("payments")
    async def _compensate(entry: Entry, failure: Failure, session: AsyncSession) -> None:
        await compensate_payment(outbox, entry, failure, session)

    @outbox.verifier("notifications")
    async def _unverifiable(entry: Entry, client: seawall.ResilientClient) -> Verdict:
        # Best effort, at most once: a notification whose outcome is unknown
        # is not sent again (the mailer ignores keys: it could go out twice).
        return Verdict.failed("outcome unknown; best effort, not sent again")

    @outbox.compensator("notifications")
    async def _not_notified(entry: Entry, failure: Failure, session: AsyncSession) -> None:
        log.warning(
            "notification_failed",
            order_id=(entry.metadata or {}).get("order_id"),
            reason=failure.reason,
            status=failure.status_code,
        )

    return outbox


# -- payments ----------------------------------------------------------------------


async def pay(order: Order, *, outbox: Outbox) -> Answer:
    """Accept *order*: write it and enqueue its charge in one transaction; answer 202.

    The charge is sent after the commit, whatever happens to this process
    (a crash, a deploy): the outbox holds it. The same order posted again is
    answered as the first time (nothing enqueued twice); another order under
    the same id is a 409.
    """
    try:
        async with _session(outbox) as session, session.begin():
            existing = await session.get(OrderRecord, order.order_id)
            if existing is not None:
                return _again(order, existing)
            charge = await outbox.enqueue(
                session,
                "payments",
                "POST",
                "/charges",
                json={
                    "order_id": order.order_id,
                    "amount": order.amount_cents,
                    "currency": order.currency,
                },
                idempotency_key=order.order_id,  # the provider charges a key once
                metadata={"order_id": order.order_id, "kind": CHARGE},
            )
            record = OrderRecord(
                order_id=order.order_id,
                amount_cents=order.amount_cents,
                currency=order.currency,
                email=order.email,
                status=ACCEPTED,
                charge_entry=charge.id,
            )
            session.add(record)
    except (IntegrityError, OutboxError):
        # Another request for the same order id committed first (its order row,
        # or its charge's idempotency key, is there now).
        async with _session(outbox) as session:
            existing = await session.get(OrderRecord, order.order_id)
        if existing is None:
            raise
        return _again(order, existing)
    log.info("order_accepted", order_id=order.order_id, entry_id=charge.id)
    return Answer(
        202,
        {"order_id": order.order_id, "status": ACCEPTED, "payment": {"state": "pending"}},
        {"Location": f"/orders/{order.order_id}"},
    )


def _again(order: Order, existing: OrderRecord) -> Answer:
    same = (existing.amount_cents, existing.currency, existing.email) == (
        order.amount_cents,
        order.currency,
        order.email,
    )
    if not same:
        return Answer(
            409,
            {"order_id": order.order_id, "detail": "another order has this id"},
        )
    return Answer(
        202,
        {"order_id": order.order_id, "status": existing.status},
        {"Location": f"/orders/{order.order_id}"},
    )


async def verify_payment(entry: Entry, client: seawall.ResilientClient) -> Verdict:
    """What became of a payments call whose outcome is unknown: ask the provider.

    ``GET /charges/{order_id}``: 200, the charge exists (a cancellation: the
    charge is cancelled); 404, it never arrived (resend, same key); anything
    else, or no answer, still unknown (the outbox asks again later).
    """
    metadata = entry.metadata or {}
    order_id = str(metadata.get("order_id"))
    try:
        response = await client.get(f"/charges/{quote(order_id, safe='')}")
    except CALL_ERRORS as exc:
        log.warning("charge_check_failed", order_id=order_id, error=type(exc).__name__)
        return Verdict.unknown()
    if response.status_code == 404:
        return Verdict.not_applied()
    if response.status_code != 200:
        return Verdict.unknown()
    if metadata.get("kind") == CANCEL:
        charge = _json(response) or {}
        if charge.get("status") == "cancelled" or charge.get("cancelled") is True:
            return Verdict.succeeded(response)
        return Verdict.not_applied()  # not cancelled yet: send the cancel again
    return Verdict.succeeded(response)


async def paid(outbox: Outbox, entry: Entry, response: Any, session: AsyncSession) -> None:
    """on_success, in the transaction that marks the entry succeeded.

    A charge: the order is paid, and its notification enqueued (it commits
    with the order, or not at all). A cancellation: noted on the order.
    """
    metadata = entry.metadata or {}
    order = await session.get(OrderRecord, metadata.get("order_id"))
    if order is None:
        # Charged, yet no such order here: only a person can sort that out. The
        # outbox flags the entry (never resent), and reconcile lists it.
        raise LookupError(f"no order {metadata.get('order_id')!r} for this {metadata.get('kind')}")
    body = _json(response) if isinstance(response, httpx.Response) else response
    if metadata.get("kind") == CANCEL:
        order.detail = "the charge was cancelled at the provider"
        log.info("charge_cancelled", order_id=order.order_id)
        return
    if order.status != ACCEPTED:
        return
    order.status = PAID
    order.charge_id = body.get("id") if isinstance(body, dict) else None
    note = await outbox.enqueue(
        session,
        "notifications",
        "POST",
        "/notifications",
        json={"event": "order_paid", "order_id": order.order_id, "email": order.email},
        idempotency_key=f"order_paid-{order.order_id}",
        metadata={"order_id": order.order_id},
    )
    order.notification_entry = note.id
    log.info("order_paid", order_id=order.order_id, charge_id=order.charge_id)


async def compensate_payment(
    outbox: Outbox, entry: Entry, failure: Failure, session: AsyncSession
) -> None:
    """The compensator, in the transaction that marks the entry compensated.

    A charge that failed after the order was accepted (declined, out of
    attempts or age, resolved as failed by hand): the order is cancelled and
    the provider's cancel API called, through the outbox too (the failure
    does not prove nothing was charged; the provider answers 404 when there
    is nothing to cancel). A cancellation that failed: 404 means there was
    nothing to cancel; anything else needs a person.
    """
    metadata = entry.metadata or {}
    order = await session.get(OrderRecord, metadata.get("order_id"))
    if order is None:
        return
    if metadata.get("kind") == CANCEL:
        if failure.status_code == 404:
            order.detail = f"{order.detail}; nothing was charged"
            return
        order.status = NEEDS_ATTENTION
        order.detail = f"the cancellation failed: {failure.reason}"
        log.warning("cancel_failed", order_id=order.order_id, reason=failure.reason)
        return
    order.status = CANCELLED
    order.detail = f"payment failed: {failure.reason}"
    cancel = await outbox.enqueue(
        session,
        "payments",
        "POST",
        f"/charges/{quote(order.order_id, safe='')}/cancel",
        idempotency_key=f"cancel-{order.order_id}",
        metadata={"order_id": order.order_id, "kind": CANCEL},
    )
    order.cancel_entry = cancel.id
    log.warning("order_cancelled", order_id=order.order_id, reason=failure.reason)


async def get_order(outbox: Outbox, order_id: str) -> OrderRecord | None:
    """The order *order_id*, as stored (None if there is none)."""
    async with _session(outbox) as session:
        return await session.get(OrderRecord, order_id)


async def order_status(order_id: str, *, outbox: Outbox) -> Answer:
    """An order as stored, with the state of its outbox entries (no call goes out)."""
    order = await get_order(outbox, order_id)
    if order is None:
        return Answer(404, {"detail": "no such order"})
    payment = await _entry_view(outbox, order.charge_entry)
    status = order.status
    if status == ACCEPTED and payment is not None and payment["needs_attention"]:
        status = NEEDS_ATTENTION
    return Answer(
        200,
        {
            "order_id": order.order_id,
            "amount_cents": order.amount_cents,
            "currency": order.currency,
            "status": status,
            "charge_id": order.charge_id,
            "detail": order.detail,
            "payment": payment,
            "cancellation": await _entry_view(outbox, order.cancel_entry),
            "notification": await _entry_view(outbox, order.notification_entry),
        },
    )


async def _entry_view(outbox: Outbox, entry_id: int | None) -> dict[str, Any] | None:
    if entry_id is None:
        return None
    row = await outbox.get(entry_id)
    if row is None:  # purged: it finished long ago
        return None
    return {
        "entry": entry_id,
        "state": row["state"],
        "attempts": row["attempts"],
        "last_status": row["last_status"],
        "last_error": row["last_error"],
        "needs_attention": bool(row["needs_attention"]),
    }


# -- catalog --------------------------------------------------------------------------


async def list_catalog(catalog: seawall.ResilientClient) -> Answer:
    """The catalog's items; served from the last good answer when the catalog fails."""
    response = await catalog.get("/items")
    if response.is_error:  # no cached answer to fall back on
        return Answer(
            502, {"detail": f"the catalog answered {response.status_code}", "stale": False}
        )
    report = seawall.report_of(response)
    stale = report is not None and report.fallback == "cache"
    age = response.headers.get("age")
    return Answer(
        200,
        {
            "items": _json(response),
            "stale": stale,
            "age": int(age) if stale and age and age.isdigit() else None,
        },
    )


# -- errors that seawall does not answer itself ---------------------------------------


def transport_error_problem(exc: Exception) -> Answer:
    """The answer for an httpx transport error that escaped a handler.

    seawall's integration answers its own errors (503 circuit open, 504
    timeouts...) and lets every other error through; a connection refused by
    a dependency would be a bare 500. The shop answers it with a 502 problem
    in the same shape, naming the dependency and nothing else.
    """
    problem = seawall.asgi.problem_for(exc)  # timeouts: seawall's 504
    if problem is not None:
        status, headers, body = problem
        return Answer(
            status,
            json.loads(body),
            {k.decode(): v.decode() for k, v in headers if k == b"retry-after"},
            "application/problem+json",
        )
    report = seawall.report_of(exc)
    dependency = report.dependency if report is not None else None
    return Answer(
        502,
        {
            "type": "urn:shop:problem:unreachable",
            "title": "Dependency unreachable",
            "status": 502,
            "detail": f"A call to the {dependency} dependency failed: unreachable.",
            "dependency": dependency,
            "reason": "unreachable",
        },
        media_type="application/problem+json",
    )
