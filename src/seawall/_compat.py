"""Every use of a private name of httpx, httpcore or OpenTelemetry, in one place.

Each helper degrades to a safe answer when the private name is gone, and
``tests/test_compat.py`` fails loudly when a supported version moves one, so
an upgrade is noticed by the suite and not by users.
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import _internal as _metrics_internal

__all__ = [
    "environment_proxies",
    "expire_connection",
    "meter_provider_set",
    "pool_connections",
    "replayable",
    "tracer_provider_set",
]


def environment_proxies(x: ModuleType) -> list[tuple[Any, str | None]]:
    """``(URLPattern, proxy URL or None)`` for HTTP_PROXY, NO_PROXY and friends.

    httpx keeps both helpers in ``httpx._utils``; the same names live in httpx2.
    """
    utils = getattr(x, "_utils", None)
    if utils is None:  # pragma: no cover - depends on the installed library
        import importlib

        utils = importlib.import_module(f"{x.__name__}._utils")
    proxies = utils.get_environment_proxies()
    return [(utils.URLPattern(pattern), url) for pattern, url in proxies.items()]


def pool_connections(transport: object) -> list[Any] | None:
    """The httpcore connections of an ``AsyncHTTPTransport``'s pool (``_pool.connections``)."""
    pool = getattr(transport, "_pool", None)
    connections = getattr(pool, "connections", None)
    return connections if isinstance(connections, list) else None


def expire_connection(transport: object, network_stream: object, seconds: float) -> bool:
    """Make the pooled connection behind *network_stream* expire within *seconds*.

    httpcore's HTTP/1.1 connection keeps its expiry in ``_expire_at``
    (``time.monotonic()`` based), set from ``keepalive_expiry`` when a
    response closes; a server's shorter ``Keep-Alive: timeout`` lowers it.
    Returns whether the connection was found.
    """
    for connection in pool_connections(transport) or ():
        inner = getattr(connection, "_connection", None)
        if inner is None or getattr(inner, "_network_stream", None) is not network_stream:
            continue
        if not hasattr(inner, "_expire_at"):
            return False  # an HTTP/2 connection: its own keep-alive rules
        when = time.monotonic() + seconds
        current = inner._expire_at
        if current is None or current > when:
            inner._expire_at = when
        return True
    return False


def replayable(request: object) -> bool:
    """Whether a request's body is in memory (``_content``), so it can be sent again.

    httpx sets ``_content`` for bodies given as bytes, text, JSON, form or
    multipart data, and leaves it unset for async iterators.
    """
    return hasattr(request, "_content")


def tracer_provider_set() -> bool:
    """Whether a global tracer provider was installed (OTel keeps it in a module global).

    A dict lookup, where ``get_tracer_provider()`` costs most of a microsecond.
    """
    return getattr(trace, "_TRACER_PROVIDER", None) is not None


def meter_provider_set() -> bool:
    """Whether a global meter provider was installed (``metrics._internal._METER_PROVIDER``)."""
    return getattr(_metrics_internal, "_METER_PROVIDER", None) is not None
