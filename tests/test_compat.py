"""The private names of httpx, httpx2, httpcore and OpenTelemetry that seawall
relies on (all behind ``seawall._compat``): these fail loudly when a supported
version moves one."""

from __future__ import annotations

import time

import httpx
import httpx2
import pytest
from opentelemetry import trace
from opentelemetry.metrics import _internal as metrics_internal

from seawall import _compat
from seawall.testing import FaultyUpstream

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("x", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_environment_proxies(x: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    found = dict(_compat.environment_proxies(x))  # type: ignore[arg-type]
    assert "http://proxy:3128" in found.values()
    assert any(p.matches(x.URL("http://127.0.0.1/")) for p, url in found.items() if url is None)  # type: ignore[attr-defined]


@pytest.mark.parametrize("x", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_replayable_bodies(x: object) -> None:
    client = x.Client()  # type: ignore[attr-defined]

    async def stream() -> object:
        yield b"x"

    assert _compat.replayable(client.build_request("POST", "http://h/", json={}))
    assert not _compat.replayable(client.build_request("POST", "http://h/", content=stream()))


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("x", [httpx, httpx2], ids=["httpx", "httpx2"])
async def test_pool_connections_and_their_expiry(x: object) -> None:
    with FaultyUpstream() as upstream:
        transport = x.AsyncHTTPTransport()  # type: ignore[attr-defined]
        async with x.AsyncClient(transport=transport) as client:  # type: ignore[attr-defined]
            response = await client.get(upstream.url)
            connections = _compat.pool_connections(transport)
            assert connections is not None
            assert len(connections) == 1
            assert connections[0].is_idle()
            stream = response.extensions["network_stream"]
            assert _compat.expire_connection(transport, stream, 1.0)
            left = connections[0]._connection._expire_at - time.monotonic()
            assert 0 < left <= 1.0


def test_otel_provider_globals_exist() -> None:
    assert hasattr(trace, "_TRACER_PROVIDER")
    assert hasattr(metrics_internal, "_METER_PROVIDER")
    assert _compat.tracer_provider_set() is (trace._TRACER_PROVIDER is not None)
    assert _compat.meter_provider_set() is (metrics_internal._METER_PROVIDER is not None)
