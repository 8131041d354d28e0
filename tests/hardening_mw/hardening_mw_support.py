"""Helpers of the hardening tests: ASGI apps over httpx, and a real uvicorn server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn


def asgi_client(app: Any, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    """An httpx client talking straight to *app* (run its lifespan yourself)."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run *app* under uvicorn on a free loopback port, in a thread; yield its URL.

    ``log_config=None``: uvicorn leaves logging alone, so its records reach
    pytest's ``caplog``.
    """
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", log_config=None, lifespan="on"
        )
    )
    thread = threading.Thread(target=server.run, name="uvicorn-hardening", daemon=True)
    thread.start()
    try:
        give_up = time.monotonic() + 10.0
        while not server.started:
            assert thread.is_alive(), "uvicorn exited during startup"
            assert time.monotonic() < give_up, "uvicorn did not start within 10 s"
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10.0)
    assert not thread.is_alive(), "uvicorn did not stop within 10 s"
