"""A small shop API on FastAPI, protected by seawall.

Run it from the repository root (see README.md)::

    PAYMENTS_URL=http://127.0.0.1:8101 CATALOG_URL=http://127.0.0.1:8102 \\
    NOTIFICATIONS_URL=http://127.0.0.1:8103 uvicorn examples.fastapi_app.app:app

* ``POST /pay``: charge an order (verify-then-commit when the charge gets no answer);
* ``GET /orders/{order_id}``: an order's state (a parked order is verified again);
* ``GET /catalog``: the catalog, served stale when the catalog service fails;
* ``GET /_resilience/``: every dependency's breaker, bulkhead and pool figures.
"""

from __future__ import annotations

import os
from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

import seawall
import seawall.asgi
import seawall.fastapi

from . import shop
from .resilience import build_registry, load_settings, setup_telemetry

__all__ = ["REQUEST_DEADLINE", "app", "create_app"]

#: Every request's time budget, in seconds: each seawall call made while handling
#: it is capped by what remains (a shorter inbound Request-Timeout header wins).
REQUEST_DEADLINE = 10.0

# One alias per dependency: handlers get the dependency's ResilientClient.
Payments = Annotated[seawall.ResilientClient, Depends(seawall.fastapi.client("payments"))]
Catalog = Annotated[seawall.ResilientClient, Depends(seawall.fastapi.client("catalog"))]
Notifications = Annotated[seawall.ResilientClient, Depends(seawall.fastapi.client("notifications"))]
OrderId = Annotated[str, Path(pattern=shop.ORDER_ID_PATTERN)]


class OrderIn(BaseModel):
    order_id: str = Field(pattern=shop.ORDER_ID_PATTERN)
    amount_cents: int = Field(gt=0)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    email: str | None = None


def order_book(request: Request) -> shop.OrderBook:
    return request.app.state.orders  # type: ignore[no-any-return]


Orders = Annotated[shop.OrderBook, Depends(order_book)]


def respond(answer: shop.Answer) -> JSONResponse:
    return JSONResponse(
        answer.body,
        status_code=answer.status,
        headers=answer.headers,
        media_type=answer.media_type,
    )


router = APIRouter()


@router.post("/pay")
async def pay(
    order: OrderIn, payments: Payments, notifications: Notifications, orders: Orders
) -> JSONResponse:
    answer = await shop.pay(
        shop.Order(**order.model_dump()),
        payments=payments,
        notifications=notifications,
        orders=orders,
    )
    return respond(answer)


@router.get("/orders/{order_id}")
async def get_order(
    order_id: OrderId, payments: Payments, notifications: Notifications, orders: Orders
) -> JSONResponse:
    answer = await shop.order_status(
        order_id, payments=payments, notifications=notifications, orders=orders
    )
    return respond(answer)


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
) -> FastAPI:
    """The shop: from *registry*, or from the TOML at *config_path* (default
    ``resilience.toml`` next to this file) with base URLs from the environment."""
    if registry is None:
        registry = build_registry(load_settings(config_path))
    app = FastAPI(title="shop (seawall example)")
    app.state.orders = shop.OrderBook()
    # Middleware (request deadline, seawall errors -> 503/504 problem+json),
    # exception handlers, and the registry's lifespan (clients open and close with the app).
    seawall.fastapi.install(app, registry, deadline=REQUEST_DEADLINE)
    app.add_exception_handler(httpx.TransportError, transport_error)
    app.include_router(router)
    # Read-only figures; pass admin_token=... to allow forcing breakers open/closed.
    app.mount("/_resilience", seawall.asgi.status_app(registry))
    setup_telemetry(app)
    return app


app = create_app()
