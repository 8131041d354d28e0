"""Helpers shared by the integration tests: drive ASGI apps without a server.

Starlette's and FastAPI's TestClient warn (httpx support is deprecated there),
so requests go through ``httpx.ASGITransport`` and the lifespan is driven by
hand, over the real ASGI lifespan protocol.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx

Message = MutableMapping[str, Any]


def asgi_client(app: Any, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    """An httpx client talking straight to *app* (no lifespan: see run_lifespan)."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@asynccontextmanager
async def run_lifespan(app: Any) -> AsyncIterator[None]:
    """Run *app*'s lifespan (startup, then shutdown on exit) as an ASGI server would."""
    to_app_send, to_app_receive = anyio.create_memory_object_stream[Message](4)
    from_app_send, from_app_receive = anyio.create_memory_object_stream[Message](4)
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    with to_app_send, to_app_receive, from_app_send, from_app_receive:
        async with anyio.create_task_group() as tg:
            tg.start_soon(app, scope, to_app_receive.receive, from_app_send.send)
            await to_app_send.send({"type": "lifespan.startup"})
            message = await from_app_receive.receive()
            assert message["type"] == "lifespan.startup.complete", message
            try:
                yield
            finally:
                await to_app_send.send({"type": "lifespan.shutdown"})
                message = await from_app_receive.receive()
                assert message["type"] == "lifespan.shutdown.complete", message


def http_scope(
    path: str, *, method: str = "GET", headers: Sequence[tuple[bytes, bytes]] = ()
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
        "state": {},
    }


def websocket_scope(path: str) -> dict[str, Any]:
    return {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
        "subprotocols": [],
        "state": {},
    }


class Recorder:
    """An ASGI receive/send pair: scripted inbound messages, recorded outbound ones."""

    def __init__(self, inbound: Sequence[Message]) -> None:
        self._inbound = list(inbound)
        self.sent: list[Message] = []
        self._done = anyio.Event()

    async def receive(self) -> Message:
        if self._inbound:
            return self._inbound.pop(0)
        # Nothing more from the client: wait as a server would until the end.
        await self._done.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(dict(message))

    def finish(self) -> None:
        self._done.set()

    def of_type(self, kind: str) -> list[Message]:
        return [m for m in self.sent if m["type"] == kind]


async def eventually(predicate: Callable[[], bool]) -> None:
    """Wait until *predicate()* holds, for 2 s at most (polled: for state kept
    outside the event loop, like a FaultyUpstream's request log)."""
    with anyio.fail_after(2.0):
        for _ in itertools.count():
            if predicate():
                return
            await anyio.sleep(0.005)
