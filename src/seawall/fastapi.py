"""FastAPI integration: one-line install, and clients injected with ``Depends``.

::

    registry = seawall.Registry.from_toml("resilience.toml")
    app = FastAPI()
    seawall.fastapi.install(app, registry, deadline=10.0)

    Payments = Annotated[seawall.ResilientClient, Depends(seawall.fastapi.client("payments"))]

    @app.post("/pay")
    async def pay(payments: Payments): ...

In tests, override a client as any dependency:
``app.dependency_overrides[seawall.fastapi.client("payments")] = lambda: fake``
(``client(name)`` returns the same callable for the same name).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ._client import ResilientClient
from ._exceptions import SeawallError
from ._registry import Registry
from .asgi import ResilienceMiddleware, problem_for

if TYPE_CHECKING:
    from .outbox import Outbox

__all__ = ["client", "install", "registry_of"]

_STATE_KEY = "seawall_registry"


def registry_of(app: Any) -> Registry:
    """The registry an app was set up with by :func:`install`."""
    registry = getattr(app.state, _STATE_KEY, None)
    if registry is None:
        raise LookupError(
            "this app has no seawall registry: call seawall.fastapi.install(app, registry)"
        )
    return registry  # type: ignore[no-any-return]


@functools.cache
def client(name: str) -> Callable[[Request], ResilientClient]:
    """A FastAPI dependency handing a handler the ``ResilientClient`` of *name*.

    The same callable is returned for the same name, so
    ``app.dependency_overrides[client("payments")]`` works in tests.
    """

    def dependency(request: Request) -> ResilientClient:
        return registry_of(request.app).client(name)

    dependency.__name__ = f"seawall_client_{name}"
    return dependency


def install(
    app: FastAPI, registry: Registry, *, outbox: Outbox | None = None, **middleware_options: Any
) -> None:
    """Set *app* up with *registry*: middleware, lifespan and exception handlers.

    ``middleware_options`` go to :class:`seawall.asgi.ResilienceMiddleware`
    (``deadline``, ``deadline_header``, ``min_deadline``,
    ``max_concurrent_requests``, ``rate_limited_status``). The app's own
    lifespan keeps running inside the registry's, so the clients are open for
    it. With an ``outbox`` (:class:`seawall.outbox.Outbox`), a dispatcher runs
    inside the app's lifespan: it starts after the app's startup and stops
    (its sends in flight finished) before the app's shutdown and the
    registry's.
    """
    setattr(app.state, _STATE_KEY, registry)
    app.add_middleware(ResilienceMiddleware, registry=registry, **middleware_options)
    rate_limited_status = middleware_options.get("rate_limited_status", 503)

    async def handle(request: Request, exc: Exception) -> Response:
        problem = problem_for(exc, rate_limited_status=rate_limited_status)
        if problem is None:  # a ConfigError, say: not an answer for the client
            raise exc
        status, headers, body = problem
        return Response(
            content=body,
            status_code=status,
            headers={k.decode(): v.decode() for k, v in headers if k != b"content-length"},
        )

    # Handlers inside FastAPI's exception middleware, so that user middleware
    # sees a response; ResilienceMiddleware maps whatever still escapes.
    app.add_exception_handler(SeawallError, handle)

    original: Callable[[Any], AbstractAsyncContextManager[Any]] = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(registry)
            state = await stack.enter_async_context(original(app_))
            if outbox is not None:
                # Inside the app's own lifespan: it starts once the app has (its
                # tables, its engine), and stops before the app closes them.
                await stack.enter_async_context(outbox.lifespan(app_))
            yield state

    app.router.lifespan_context = lifespan
