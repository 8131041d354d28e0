"""The same shop as ``examples/fastapi_app``, on Litestar.

It shares that example's configuration (``resilience.toml``, with the same
``PAYMENTS_URL``, ``CATALOG_URL``, ``NOTIFICATIONS_URL`` and ``DATABASE_URL``
overrides) and its framework-free logic (``shop.py``: the orders in SQLite,
the charges in seawall's outbox); only the wiring differs. Run it from the
repository root::

    uvicorn examples.litestar_app.app:app

``outbox`` below is what the ``seawall outbox`` commands take::

    seawall outbox reconcile examples.litestar_app.app:outbox
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any

import httpx
import msgspec
from examples.fastapi_app import shop
from examples.fastapi_app.resilience import build_registry, load_settings, setup_telemetry
from litestar import Litestar, Request, Response, asgi, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.logging import LoggingConfig
from litestar.params import JSONBody, PathParameter

import seawall
import seawall.asgi
import seawall.db
import seawall.litestar
from seawall.outbox import Outbox

__all__ = ["REQUEST_DEADLINE", "app", "create_app", "outbox"]

#: Every request's time budget, in seconds (see the FastAPI example).
REQUEST_DEADLINE = 10.0

# Handlers name the dependency they want; Litestar injects it by that name
# (see ``dependencies=`` in create_app). NamedDependency, JSONBody and
# PathParameter need Litestar 2.23 or later.
Client = NamedDependency[seawall.ResilientClient]
ShopOutbox = NamedDependency[Outbox]


class OrderIn(msgspec.Struct):
    order_id: Annotated[str, msgspec.Meta(pattern=shop.ORDER_ID_PATTERN)]
    amount_cents: Annotated[int, msgspec.Meta(gt=0)]
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")] = "EUR"
    email: str | None = None


def respond(answer: shop.Answer) -> Response[Any]:
    return Response(
        answer.body,
        status_code=answer.status,
        headers=answer.headers,
        media_type=answer.media_type,
    )


def provide_outbox(state: State) -> Outbox:
    return state.outbox  # type: ignore[no-any-return]


@post("/pay", status_code=202)
async def pay(data: JSONBody[OrderIn], outbox: ShopOutbox) -> Response[Any]:
    order = shop.Order(data.order_id, data.amount_cents, data.currency, data.email)
    return respond(await shop.pay(order, outbox=outbox))


@get("/orders/{order_id:str}")
async def get_order(
    order_id: Annotated[str, PathParameter(pattern=shop.ORDER_ID_PATTERN)],
    outbox: ShopOutbox,
) -> Response[Any]:
    return respond(await shop.order_status(order_id, outbox=outbox))


@get("/catalog")
async def catalog(catalog: Client) -> Response[Any]:
    return respond(await shop.list_catalog(catalog))


def transport_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
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
) -> Litestar:
    """The shop on Litestar: from *registry*, or from the TOML at *config_path*.

    *database_url*, *clock* and *dispatch* as in the FastAPI example's ``create_app``.
    """
    if registry is None:
        registry = build_registry(load_settings(config_path))
    engine = shop.create_engine(database_url or shop.database_url())
    outbox = shop.build_outbox(registry, engine, clock=clock)

    def database(app: Litestar) -> AbstractAsyncContextManager[None]:
        # Tables, a warning for any call made inside a transaction; the engine
        # disposed once the dispatcher has stopped.
        return shop.database(engine)

    # Entered in this order, left in reverse, all inside the registry's (the
    # plugin puts it first): the tables exist before the dispatcher starts,
    # and it stops before the engine is disposed.
    lifespan: list[Callable[[Litestar], AbstractAsyncContextManager[Any]]] = [database]
    if dispatch:
        lifespan.append(outbox.lifespan)

    # Read-only figures of every dependency: seawall's status app, mounted as is.
    resilience = asgi("/_resilience", is_mount=True, copy_scope=True)(
        seawall.asgi.status_app(registry)
    )
    app = Litestar(
        route_handlers=[pay, get_order, catalog, resilience],
        # Middleware (request deadline, seawall errors -> 503/504 problem+json),
        # exception handlers, and the registry's lifespan.
        plugins=[seawall.litestar.ResiliencePlugin(registry, deadline=REQUEST_DEADLINE)],
        lifespan=lifespan,
        dependencies={
            "catalog": seawall.litestar.provide_client("catalog"),
            "outbox": Provide(provide_outbox, sync_to_thread=False),
        },
        exception_handlers={httpx.TransportError: transport_error},
        state=State({"outbox": outbox}),
        # Leave the root logger alone: structlog writes the shop's logs.
        logging_config=LoggingConfig(configure_root_logger=False),
    )
    setup_telemetry(app)
    return app


app = create_app()

#: The app's outbox: ``seawall outbox reconcile|status|run examples.litestar_app.app:outbox``.
outbox: Outbox = app.state.outbox
