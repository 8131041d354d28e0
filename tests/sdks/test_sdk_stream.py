"""openai ``stream=True`` through seawall: events pass through one by one, each read bounded.

A small SSE server on loopback (in the test's own event loop) sends each event
only when the test releases it, so the test can tell a stream passed through
from one buffered until its end.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import httpx2
import openai
import pytest
from sdk_support import MESSAGES, policy

import seawall
import seawall.httpx2

pytestmark = pytest.mark.anyio

WORDS = ["Hel", "lo", ", wor", "ld"]


def _event(data: str) -> bytes:
    payload = f"data: {data}\n\n".encode()
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


def _chunk(text: str) -> str:
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-test",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
        }
    )


class SseServer:
    """Answers every request with a chat completion stream, one event per release()."""

    def __init__(self, listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self.url = f"http://127.0.0.1:{port}"
        self.sent = 0
        self.requests = 0
        self._credit = 0
        self._more = anyio.Event()

    def release(self, events: int = 1) -> None:
        """Let the server send *events* more events."""
        self._credit += events
        self._more.set()

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive()
            header_part, _, body = head.partition(b"\r\n\r\n")
            length = 0
            for line in header_part.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                body += await stream.receive()
            self.requests += 1
            await stream.send(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            )
            for word in WORDS:
                await self._wait_for_release()
                self.sent += 1
                await stream.send(_event(_chunk(word)))
            await self._wait_for_release()
            await stream.send(_event("[DONE]") + b"0\r\n\r\n")

    async def _wait_for_release(self) -> None:
        while self._credit == 0:
            self._more = anyio.Event()
            await self._more.wait()
        self._credit -= 1


@asynccontextmanager
async def sse_server() -> AsyncIterator[SseServer]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    server = SseServer(listener)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.handle)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


# asyncio only: at "[DONE]" openai leaves its SSE generators unexhausted, and
# trio warns when they are collected (a plain httpx2.AsyncClient does the same).
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_openai_stream_passes_through_chunk_by_chunk(
    dependency: str, anyio_backend: str
) -> None:
    async with (
        sse_server() as server,
        seawall.httpx2.ResilientClient(dependency, policy=policy()) as http,
    ):
        client = openai.AsyncOpenAI(
            api_key="sk-test", base_url=f"{server.url}/v1", http_client=http, max_retries=0
        )
        # The call returns at the response's headers, before any event was sent.
        stream = await client.chat.completions.create(
            model="gpt-test", messages=MESSAGES, stream=True
        )
        assert server.sent == 0
        report = seawall.report_of(stream.response)
        assert report is not None
        assert (report.outcome, report.attempts) == ("success", 1)

        received: list[str | None] = []
        chunks = stream.__aiter__()
        for i, word in enumerate(WORDS):
            server.release()
            # A stream buffered anywhere would never yield here: the server
            # sends nothing more until the caller has this event.
            with anyio.fail_after(5):
                chunk = await chunks.__anext__()
            received.append(chunk.choices[0].delta.content)
            assert server.sent == i + 1
            assert received[-1] == word
        server.release()
        with pytest.raises(StopAsyncIteration):
            await chunks.__anext__()
        await stream.close()
        assert received == WORDS
        assert server.requests == 1


async def test_a_stalled_stream_ends_at_the_read_timeout(dependency: str) -> None:
    # A long attempt (for non-streamed completions) and a per-request read
    # bound for the stream: seawall applies the shorter of the two per read.
    pol = policy(timeouts=seawall.Timeouts(read=120, attempt=120, total=180))
    async with (
        sse_server() as server,
        seawall.httpx2.ResilientClient(dependency, policy=pol) as http,
    ):
        client = openai.AsyncOpenAI(
            api_key="sk-test", base_url=f"{server.url}/v1", http_client=http, max_retries=0
        )
        stream = await client.chat.completions.create(
            model="gpt-test",
            messages=MESSAGES,
            stream=True,
            timeout=httpx2.Timeout(0.3, connect=5.0),
        )
        server.release()
        chunks = stream.__aiter__()
        first = await chunks.__anext__()
        assert first.choices[0].delta.content == "Hel"
        t0 = time.perf_counter()
        with pytest.raises(openai.APITimeoutError) as timed_out:
            await chunks.__anext__()  # the server never sends the second event
        assert 0.25 < time.perf_counter() - t0 < 5
        assert isinstance(timed_out.value.__cause__, httpx2.ReadTimeout)
        await stream.close()
