"""The demo's shop app, twice: through one shared httpx client, and through seawall.

Both variants serve ``/pay`` (pay an order on payments), ``/catalog`` (the
catalog's items), ``/_stats`` with what each saw of its dependencies and
orders, and ``/_orders`` (every order it recorded, for the ledger check).
Each keeps its orders in a SQLite file of its own.

* The plain shop charges the provider on ``/pay`` with a shared
  ``httpx.AsyncClient`` (no idempotency key), and records the order once the
  charge has answered: the usual shape, which loses an order whose charge went
  through unanswered, and charges twice a customer who clicks again.
* The seawall shop records the order and enqueues its charge in one
  transaction (:mod:`seawall.outbox`), answers ``202``, and lets the outbox's
  dispatcher charge it, with the order id as idempotency key: an unknown
  outcome is verified with the provider, an order unpaid after the payment
  window is cancelled and its charge, if any, refunded.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import seawall
from seawall.asgi import ResilienceMiddleware, status_app

from . import replicas

#: An order unpaid this long after it was placed is cancelled (the outbox's
#: ``max_age`` for payments), unless the shop is given another window.
PAYMENT_WINDOW = 60.0

_metadata = sa.MetaData()
orders = sa.Table(
    "orders",
    _metadata,
    sa.Column("order_id", sa.String, primary_key=True),
    sa.Column("amount", sa.Integer, nullable=False),
    # plain: paid; seawall: pending, then paid or cancelled
    sa.Column("status", sa.String, nullable=False),
    sa.Column("charge_id", sa.String),
)


def database(path: str) -> AsyncEngine:
    """An engine on the SQLite file *path*, set up as docs/outbox.md advises.

    One connection: SQLite has one writer at a time anyway, and writers that
    queue for the pool's connection are woken as soon as it is free, where
    writers queued in SQLite's busy handler sleep up to 100 ms between tries
    (a shop's /pay p50 of 150 ms under load, against a few with one connection).
    """
    from seawall.outbox import configure_sqlite

    return configure_sqlite(
        create_async_engine(f"sqlite+aiosqlite:///{path}", pool_size=1, max_overflow=0)
    )


async def _order_of(request: Request) -> tuple[str, int] | None:
    """The order a customer pays: ``{"order_id": str, "amount": int}``."""
    try:
        body = await request.json()
    except ValueError:
        return None
    order_id = body.get("order_id") if isinstance(body, dict) else None
    amount = body.get("amount", 42) if isinstance(body, dict) else None
    if not isinstance(order_id, str) or not order_id or not isinstance(amount, int):
        return None
    return order_id, amount


_BAD_ORDER = JSONResponse({"error": 'send {"order_id": str, "amount": int}'}, status_code=400)


async def _order_counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(orders.c.status, sa.func.count()).group_by(orders.c.status)
        )
        return {str(status): int(n) for status, n in rows.all()}


async def _all_orders(engine: AsyncEngine) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(orders.c.order_id, orders.c.status))
        return {str(order_id): str(status) for order_id, status in rows.all()}


def _plain_outcome(exc: BaseException | None, response: httpx.Response | None) -> str:
    if response is not None:
        return "success" if response.status_code < 400 else "http_error"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect_error"
    return "transport_error"


def plain_app(upstream: str, db: str) -> Starlette:
    """The app as it is usually written: one shared ``httpx.AsyncClient`` for everything,
    and the order recorded after the charge answered."""
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    client = httpx.AsyncClient(base_url=upstream)  # httpx defaults: 100 connections, 5 s timeouts
    engine = database(db)

    async def call(dependency: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            outcomes[dependency][_plain_outcome(exc, None)] += 1
            raise
        outcomes[dependency][_plain_outcome(None, response)] += 1
        return response

    async def pay(request: Request) -> JSONResponse:
        order = await _order_of(request)
        if order is None:
            return _BAD_ORDER
        order_id, amount = order
        try:
            charge = await call(
                "payments", "POST", "/charges", json={"order_id": order_id, "amount": amount}
            )
        except httpx.HTTPError as exc:
            return JSONResponse({"error": type(exc).__name__}, status_code=500)
        if charge.status_code >= 400:
            return JSONResponse({"error": "payment failed"}, status_code=502)
        async with engine.begin() as conn:
            await conn.execute(
                sqlite_insert(orders)
                .values(
                    order_id=order_id,
                    amount=amount,
                    status="paid",
                    charge_id=charge.json().get("id"),
                )
                .on_conflict_do_nothing()
            )
        return JSONResponse({"order": order_id, "status": "paid"})

    async def catalog(request: Request) -> JSONResponse:
        try:
            items = await call("catalog", "GET", "/items")
        except httpx.HTTPError as exc:
            return JSONResponse({"error": type(exc).__name__}, status_code=500)
        if items.status_code >= 400:
            return JSONResponse({"error": "catalog failed"}, status_code=502)
        return JSONResponse({"items": items.json(), "stale": False})

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "dependencies": {d: {"outcomes": dict(c)} for d, c in outcomes.items()},
                "orders": await _order_counts(engine),
            }
        )

    async def all_orders(request: Request) -> JSONResponse:
        return JSONResponse({"orders": await _all_orders(engine)})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.run_sync(_metadata.create_all)
        try:
            async with client:
                yield
        finally:
            await engine.dispose()

    return Starlette(
        routes=[
            Route("/pay", pay, methods=["POST"]),
            Route("/catalog", catalog),
            Route("/_stats", stats),
            Route("/_orders", all_orders),
        ],
        lifespan=lifespan,
    )


def seawall_registry(upstream: str, catalog: str | None = None) -> seawall.Registry:
    """The demo's policies, as a user would write them (see docs/).

    ``catalog`` is the catalog's own base URL where it differs from payments'
    (bench/blast_radius.py uses these same policies).
    """
    registry = seawall.Registry()
    registry.add(
        "payments",
        base_url=upstream,
        policy=seawall.Policy(
            timeouts=seawall.Timeouts(connect=1.0, read=2.0, attempt=2.0, total=3.0),
            retry=seawall.Retry(attempts=2, backoff=seawall.Backoff(initial=0.05, maximum=0.5)),
            # The limit follows the provider's latency: up to 100 charges at once
            # while it answers quickly, down to 10 when attempts time out. A
            # provider that is three times slower than usual still gets its
            # charges: the shop's own busy CPU slows answers that much.
            bulkhead=seawall.Bulkhead(
                max_concurrent=100,
                adaptive=seawall.AdaptiveLimit(min_limit=10, initial=50, tolerance=3.0),
            ),
            # The breaker opens on timeouts and gateway errors: a provider that
            # answers 500 at once costs the shop nothing to ask (the retry budget
            # bounds the extra load), and a breaker still open when it recovers
            # would refuse the first charges that could go through.
            breaker=seawall.CircuitBreaker(
                failure_rate_threshold=0.5,
                window_size=20,
                minimum_calls=10,
                open_duration=5.0,
                half_open_calls=3,
                failure_statuses=frozenset({502, 503, 504}),
            ),
            pool=seawall.Pool(max_connections=100, max_keepalive=100),
        ),
    )
    registry.add(
        "catalog",
        base_url=catalog or upstream,
        policy=seawall.Policy(
            timeouts=seawall.Timeouts(connect=1.0, read=1.0, attempt=1.0, total=2.0),
            retry=seawall.Retry(attempts=2, backoff=seawall.Backoff(initial=0.02, maximum=0.2)),
            bulkhead=seawall.Bulkhead(max_concurrent=50),
            breaker=seawall.CircuitBreaker(minimum_calls=10, window_size=20, open_duration=5.0),
            fallback=seawall.Fallback(stale_if_error=300),
            pool=seawall.Pool(max_connections=50, max_keepalive=50),
        ),
    )
    return registry


def _min_rtt_ms(bulkhead: dict[str, Any] | None) -> float | None:
    """An adaptive bulkhead's minimum RTT estimate, in milliseconds (None otherwise)."""
    adaptive = (bulkhead or {}).get("adaptive") or {}
    min_rtt = adaptive.get("min_rtt")
    return None if min_rtt is None else round(1000 * min_rtt, 1)


class CallCounts:
    """A structlog processor counting seawall's ``seawall.call`` events per dependency.

    The outbox's dispatcher makes the seawall shop's payments calls, not a
    route: the shop learns their outcomes from the events seawall logs for
    every call (``serve.py`` puts this first in the app's structlog chain).
    """

    def __init__(self, dependencies: Iterable[str]) -> None:
        self.dependencies = frozenset(dependencies)
        self.outcomes: dict[str, Counter[str]] = defaultdict(Counter)
        self.retries: Counter[str] = Counter()
        self.fallbacks: Counter[str] = Counter()

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        dependency = event_dict.get("dependency")
        if event_dict.get("event") == "seawall.call" and dependency in self.dependencies:
            self.outcomes[dependency][str(event_dict.get("outcome"))] += 1
            self.retries[dependency] += len(event_dict.get("retries") or ())
            if event_dict.get("fallback"):
                self.fallbacks[dependency] += 1
        return event_dict


def _outbox_states(status: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    return {
        dependency: {state: figures["count"] for state, figures in sorted(states.items())}
        for dependency, states in sorted(status["dependencies"].items())
    }


def seawall_app(
    upstream: str,
    db: str,
    *,
    calls: CallCounts | None = None,
    payment_window: float = PAYMENT_WINDOW,
) -> Starlette:
    """The same app with seawall: a client per dependency, each with its own policy, and
    the payments sent by a transactional outbox.

    ``calls`` counts the outbox's calls (see :class:`CallCounts`);
    ``payment_window`` is how long an order may wait for its charge before it
    is cancelled (and its charge, if any, refunded).
    """
    from seawall.outbox import Outbox, Verdict

    # With --replicas, one replica of a fleet sharing state on Redis (replicas.py).
    registry = replicas.from_env(seawall_registry(upstream))
    # The provider's refunds: the compensator's follow-up, never given up on.
    registry.add(
        "refunds",
        base_url=upstream,
        policy=seawall.Policy(
            timeouts=seawall.Timeouts(connect=1.0, read=2.0, attempt=2.0, total=3.0),
            retry=seawall.Retry(attempts=2, backoff=seawall.Backoff(initial=0.05, maximum=0.5)),
            bulkhead=seawall.Bulkhead(max_concurrent=20),
        ),
    )
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    retries: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    verdicts: Counter[str] = Counter()
    calls = calls or CallCounts(())
    engine = database(db)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    outbox = Outbox(registry, engine, session_factory=sessions)
    backoff = seawall.Backoff(initial=0.25, maximum=2.0)
    # Scaled to a demo that lasts a minute: verify an unknown outcome after 1 s
    # (30 s by default), retry within 2 s, and cancel an order still unpaid
    # after the payment window.
    outbox.route(
        "payments",
        send_deadline=5,
        lease_margin=5,
        verify_delay=1,
        backoff=backoff,
        max_attempts=1000,
        max_age=payment_window,
    )
    outbox.route("refunds", send_deadline=5, lease_margin=5, verify_delay=1, backoff=backoff)

    @outbox.verifier("payments")
    async def verify(entry: Any, client: Any) -> Verdict:
        response = await client.get(f"/charges/{quote(entry.json()['order_id'], safe='')}")
        if response.status_code == 404:
            verdicts["not_applied"] += 1
            return Verdict.not_applied()  # resent, same key
        if response.status_code == 200 and response.json().get("status") == "succeeded":
            verdicts["succeeded"] += 1
            return Verdict.succeeded(response)  # on_success marks the order paid
        return Verdict.unknown()

    @outbox.on_success("payments")
    async def paid(entry: Any, response: Any, session: AsyncSession) -> None:
        await session.execute(
            sa.update(orders)
            .where(orders.c.order_id == entry.json()["order_id"], orders.c.status == "pending")
            .values(status="paid", charge_id=response.json().get("id"))
        )

    @outbox.compensator("payments")
    async def cancel(entry: Any, failure: Any, session: AsyncSession) -> None:
        # Unpaid past the window (or refused): cancel the order, and refund
        # whatever the provider may have charged, in the same transaction.
        order_id = entry.json()["order_id"]
        await session.execute(
            sa.update(orders).where(orders.c.order_id == order_id).values(status="cancelled")
        )
        await outbox.enqueue(
            session,
            "refunds",
            "POST",
            f"/charges/{quote(order_id, safe='')}/cancel",
            idempotency_key=f"cancel-{order_id}",
        )

    def count(obj: object) -> None:
        report = seawall.report_of(obj)
        if report is not None:
            outcomes[report.dependency][report.outcome] += 1
            retries[report.dependency] += len(report.retries)
            if report.fallback:
                fallbacks[report.dependency] += 1

    async def pay(request: Request) -> JSONResponse:
        order = await _order_of(request)
        if order is None:
            return _BAD_ORDER
        order_id, amount = order
        # The order and its charge commit together, or neither does. A customer
        # who clicks again finds both there (the key is the order id). A
        # connection, not a session: cheaper, and the dispatcher, polling every
        # 0.2 s, then claims the orders of a busy shop in batches.
        async with engine.begin() as conn:
            await conn.execute(
                sqlite_insert(orders)
                .values(order_id=order_id, amount=amount, status="pending")
                .on_conflict_do_nothing()
            )
            await outbox.enqueue(
                conn,
                "payments",
                "POST",
                "/charges",
                json={"order_id": order_id, "amount": amount},
                idempotency_key=order_id,
            )
        return JSONResponse({"order": order_id, "status": "pending"}, status_code=202)

    async def catalog(request: Request) -> JSONResponse:
        try:
            items = await registry.client("catalog").get("/items")
        except Exception as exc:
            count(exc)
            raise
        count(items)
        if items.status_code >= 400:
            return JSONResponse({"error": "catalog failed"}, status_code=502)
        report = seawall.report_of(items)
        return JSONResponse({"items": items.json(), "stale": bool(report and report.fallback)})

    async def stats(request: Request) -> JSONResponse:
        snapshot = registry.snapshot()["dependencies"]
        return JSONResponse(
            {
                "dependencies": {
                    name: {
                        "outcomes": dict(outcomes[name] + calls.outcomes[name]),
                        "retries": retries[name] + calls.retries[name],
                        "fallbacks": fallbacks[name] + calls.fallbacks[name],
                        "breaker": (snapshot[name]["breaker"] or {}).get("state"),
                        "bulkhead_in_use": (snapshot[name]["bulkhead"] or {}).get("in_use"),
                        "bulkhead_limit": (snapshot[name]["bulkhead"] or {}).get("limit"),
                        "bulkhead_min_rtt_ms": _min_rtt_ms(snapshot[name]["bulkhead"]),
                    }
                    for name in registry.names
                },
                "orders": await _order_counts(engine),
                "outbox": _outbox_states(await outbox.status()),
                "verified": dict(verdicts),
            }
        )

    async def all_orders(request: Request) -> JSONResponse:
        return JSONResponse({"orders": await _all_orders(engine)})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.run_sync(_metadata.create_all)
        await outbox.create_schema()
        try:
            # The dispatcher stops first, then the registry closes its clients.
            async with registry.lifespan(app), outbox.dispatcher(concurrency=8, poll_interval=0.2):
                yield
        finally:
            await engine.dispose()

    return Starlette(
        routes=[
            Route("/pay", pay, methods=["POST"]),
            Route("/catalog", catalog),
            Route("/_stats", stats),
            Route("/_orders", all_orders),
            Mount("/_resilience", status_app(registry)),
        ],
        middleware=[Middleware(ResilienceMiddleware, registry=registry, deadline=10.0)],
        lifespan=lifespan,
    )
