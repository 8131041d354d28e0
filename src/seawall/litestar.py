"""Litestar integration: an init plugin, and ``Provide``-able clients.

::

    registry = seawall.Registry.from_toml("resilience.toml")
    app = Litestar(
        route_handlers=[pay],
        plugins=[seawall.litestar.ResiliencePlugin(registry, deadline=10.0)],
        dependencies={"payments": seawall.litestar.provide_client("payments")},
    )

``litestar`` is an optional extra: importing ``seawall`` never imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from litestar import Request, Response
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.plugins import InitPlugin

from ._client import ResilientClient
from ._exceptions import SeawallError
from ._registry import Registry
from .asgi import ResilienceMiddleware, problem_for

__all__ = ["ResiliencePlugin", "provide_client"]

_STATE_KEY = "seawall_registry"


def _registry(state: State) -> Registry:
    registry = state.get(_STATE_KEY)
    if registry is None:
        raise LookupError(
            "this app has no seawall registry: add seawall.litestar.ResiliencePlugin(registry)"
        )
    return registry  # type: ignore[no-any-return]


def provide_client(name: str) -> Provide:
    """A ``Provide`` handing a handler the ``ResilientClient`` of *name*."""

    def provide(state: State) -> ResilientClient:
        return _registry(state).client(name)

    return Provide(provide, sync_to_thread=False)


def _answer_otherwise(
    request: Request[Any, Any, Any], exc: Exception, ours: Callable[..., Any]
) -> Response[Any]:
    """What Litestar would answer for *exc* without seawall's handler *ours*."""
    route_handler = request.scope.get("route_handler")
    handlers = route_handler.resolve_exception_handlers() if route_handler is not None else {}
    keys: list[Any] = [*type(exc).__mro__, 500]
    for key in keys:
        handler = handlers.get(key)
        if handler is not None and handler is not ours:
            return handler(request, exc)
    from litestar.exceptions.responses import create_debug_response, create_exception_response

    if request.app.debug:
        return create_debug_response(request, exc)
    return create_exception_response(request, exc)


class ResiliencePlugin(InitPlugin):
    """Registers seawall's middleware, the registry's lifespan and exception handlers.

    ``middleware_options`` go to :class:`seawall.asgi.ResilienceMiddleware`
    (``deadline``, ``deadline_header``, ``min_deadline``,
    ``max_concurrent_requests``, ``rate_limited_status``).

    Use the plugin, not ``ResilienceMiddleware(litestar_app)``: Litestar
    answers every error inside the app, so a middleware wrapped around it
    from outside never sees one, and only the plugin's handlers can map them.
    """

    __slots__ = ("middleware_options", "registry")

    def __init__(self, registry: Registry, **middleware_options: Any) -> None:
        self.registry = registry
        self.middleware_options = middleware_options

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        registry = self.registry
        rate_limited_status = self.middleware_options.get("rate_limited_status", 503)
        app_config.state[_STATE_KEY] = registry
        app_config.middleware.insert(
            0,
            DefineMiddleware(
                ResilienceMiddleware,  # type: ignore[arg-type]
                registry=registry,
                **self.middleware_options,
            ),
        )
        # First, so outermost: the app's own lifespans run inside the registry's
        # and find the clients open at startup and shutdown (as with FastAPI).
        app_config.lifespan.insert(0, lambda app: registry)

        def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
            problem = problem_for(exc, rate_limited_status=rate_limited_status)
            if problem is None:
                # A ConfigError, or a timeout that is no seawall call's: not ours
                # to answer (and a handler that raised would let the error escape
                # Litestar altogether), so the app's next handler or Litestar's own.
                return _answer_otherwise(request, exc, handle)
            status, headers, body = problem
            return Response(
                content=body,
                status_code=status,
                headers={k.decode(): v.decode() for k, v in headers if k != b"content-length"},
                media_type="application/problem+json",
            )

        # The app's own handler for SeawallError, if any, wins.
        app_config.exception_handlers.setdefault(SeawallError, handle)
        # Litestar answers every error inside the app, so ResilienceMiddleware
        # never sees a seawall call's timeouts (httpx's, or the attempt
        # timeout's TimeoutError): map them here too, unless the app has its own.
        app_config.exception_handlers.setdefault(httpx.TimeoutException, handle)
        app_config.exception_handlers.setdefault(TimeoutError, handle)
        # A handler that fans out in a task group raises an ExceptionGroup:
        # answered only if it holds seawall errors alone (see problem_for);
        # any other group is a bug, answered as Litestar answers any other.
        app_config.exception_handlers.setdefault(ExceptionGroup, handle)
        return app_config
