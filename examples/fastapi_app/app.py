"""A small shop API on FastAPI, protected by seawall, its orders in SQLite.

Run it from the repository root (see README.md)::

    PAYMENTS_URL=http://127.0.0.1:8101 CATALOG_URL=http://127.0.0.1:8102 \\
    NOTIFICATIONS_URL=http://127.0.0.1:8103 uvicorn examples.fastapi_app.app:app

* ``POST /pay``: accept an order: it is stored and its charge enqueued in one
  transaction (seawall's outbox); 202 with ``Location: /orders/{order_id}``;
* ``GET /orders/{order_id}``: the order (accepted, paid, cancelled or
  needs_attention) and the state of its charge in the outbox;
* ``GET /catalog``: the catalog, served stale when the catalog service fails;
* ``GET /_resilience/``: every dependency's breaker, bulkhead and pool figures,
  and the outbox's counts.

The outbox's dispatcher runs for the app's life. ``outbox`` below is what the
``seawall outbox`` commands take::

    seawall outbox reconcile examples.fastapi_app.app:outbox
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

import seawall
import seawall.asgi
import seawall.db
import seawall.fastapi
from seawall.outbox import Outbox

from . import shop
from .resilience import build_registry, load_settings, setup_telemetry

__all__ = ["REQUEST_DEADLINE", "app", "create_app", "outbox"]

#: Every request's time budget, in seconds: each seawall call made while handling
#: it is capped by what remains (a shorter inbound Request-Timeout header wins).
REQUEST_DEADLINE = 10.0

# One alias per dependency: handlers get the dependency's ResilientClient.
Catalog = Annotated[seawall.ResilientClient, Depends(seawall.fastapi.client("catalog"))]
OrderId = Annotated[str, Path(pattern=shop.ORDER_ID_PATTERN)]


class OrderIn(BaseModel):
    order_id: str = Field(pattern=shop.ORDER_ID_PATTERN)
    amount_cents: int = Field(gt=0)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    email: str | None = None


def shop_outbox(request: Request) -> Outbox:
    return request.app.state.outbox  # type: ignore[no-any-return]


ShopOutbox = Annotated[Outbox, Depends(shop_outbox)]


def respond(answer: shop.Answer) -> JSONResponse:
    return JSONResponse(
        answer.body,
        status_code=answer.status,
        headers=answer.headers,
        media_type=answer.media_type,
    )


router = APIRouter()


@router.post("/pay")
async def pay(order: OrderIn, outbox: ShopOutbox) -> JSONResponse:
    return respond(await shop.pay(shop.Order(**order.model_dump()), outbox=outbox))


@router.get("/orders/{order_id}")
async def get_order(order_id: OrderId, outbox: ShopOutbox) -> JSONResponse:
    return respond(await shop.order_status(order_id, outbox=outbox))


@router.get("/catalog")
async def catalog(catalog: Catalog) -> JSONResponse:
    return respond(await shop.list_catalog(catalog))


async def transport_error(request: Request, exc: Exception) -> JSONResponse:
    # seawall answers its own errors; a dependency that refuses connections
    # would otherwise be a bare 500.
    return respond(shop.transport_error_problem(exc))


def create_app(
    config_path: str | os.PathLike[str] | None = None,
    *,
    registry: seawall.Registry | None = None,
    database_url: str | None = None,
    clock: seawall.Clock | None = None,
    dispatch: bool = True,
) -> FastAPI:
    """The shop: from *registry*, or from the TOML at *config_path* (default
    ``resilience.toml`` next to this file) with base URLs from the environment.

    Orders and the outbox live at *database_url* (default ``DATABASE_URL``, else
    ``shop.db`` in the working directory); *clock* is the outbox's. With
    ``dispatch=False`` no dispatcher runs in the app (tests drive one by hand;
    ``seawall outbox run examples.fastapi_app.app:outbox`` runs one apart).
    """
    if registry is None:
        registry = build_registry(load_settings(config_path))
    engine = shop.create_engine(database_url or shop.database_url())
    outbox = shop.build_outbox(registry, engine, clock=clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Tables, a warning for any call made inside a transaction; the engine
        # disposed once the dispatcher has stopped.
        async with shop.database(engine):
            yield

    app = FastAPI(title="shop (seawall example)", lifespan=lifespan)
    app.state.outbox = outbox
    # Middleware (request deadline, seawall errors -> 503/504 problem+json),
    # exception handlers, the registry's lifespan (clients open and close with
    # the app) and the outbox's dispatcher, inside the app's own lifespan.
    seawall.fastapi.install(
        app, registry, outbox=outbox if dispatch else None, deadline=REQUEST_DEADLINE
    )
    app.add_exception_handler(httpx.TransportError, transport_error)
    app.include_router(router)
    # Read-only figures; pass admin_token=... to allow forcing breakers open/closed.
    app.mount("/_resilience", seawall.asgi.status_app(registry))
    setup_telemetry(app)
    return app


app = create_app()

#: The app's outbox: ``seawall outbox reconcile|status|run examples.fastapi_app.app:outbox``.
outbox: Outbox = app.state.outbox
