"""Nested seawall calls never resend what may not be resent; streamed answers are
handed over at their headers and hold their bulkhead slot until closed."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import httpx
import pytest

import seawall
from seawall import (
    Bulkhead,
    BulkheadFullError,
    OutcomeUnknownError,
    Policy,
    Registry,
    Timeouts,
)
from seawall.testing import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio


async def test_a_guard_never_retries_a_keyless_post_its_attempt_timeout_cut(
    upstream: FaultyUpstream,
) -> None:
    upstream.route("/charge", Fault.latency(0.8))
    inner = seawall.ResilientClient("payments", base_url=upstream.url, policy=Policy(breaker=None))
    outer = seawall.guard("checkout", Policy(timeouts=Timeouts(attempt=0.3)), registry=Registry())
    async with inner:
        with anyio.fail_after(5), pytest.raises(OutcomeUnknownError) as info:
            await outer.call(inner.post, "/charge", json={"amount": 1})
    assert upstream.count("/charge") == 1
    assert isinstance(info.value.__cause__, TimeoutError)  # the cut that left it unknown
    report = seawall.report_of(info.value)
    assert report is not None
    assert report.outcome == "outcome_unknown"


async def test_a_guard_still_retries_a_keyed_post_it_cut(upstream: FaultyUpstream) -> None:
    upstream.route("/charge", Fault.latency(0.8), Fault.ok())
    inner = seawall.ResilientClient("payments", base_url=upstream.url, policy=Policy(breaker=None))
    outer = seawall.guard(
        "checkout",
        Policy(
            timeouts=Timeouts(attempt=0.3),
            retry=seawall.Retry(attempts=2, backoff=seawall.Backoff(initial=0.0, jitter=False)),
        ),
        registry=Registry(),
    )
    async with inner:
        with anyio.fail_after(5):
            response = await outer.call(inner.post, "/charge", idempotency_key="k-1")
    assert response.status_code == 200
    assert upstream.count("/charge", idempotency_key="k-1") == 2


async def test_default_retry_on_never_matches_a_refusal_or_an_unknown_outcome() -> None:
    for error in (
        OutcomeUnknownError("?", dependency="x"),
        seawall.CircuitOpenError("open", dependency="x"),
        BulkheadFullError("full", dependency="x"),
    ):
        calls = 0

        async def fn(error: Exception = error) -> None:
            nonlocal calls
            calls += 1
            raise error

        with pytest.raises(type(error)):
            await seawall.guard("x", Policy(breaker=None), registry=Registry()).call(fn)
        assert calls == 1


class EventStream:
    """A server-sent-events upstream on loopback: one event every *gap* seconds.

    It sends the second event only once the test says the first arrived, so a
    transport that buffered the body would hang instead of passing.
    """

    def __init__(self, events: int = 8, gap: float = 0.1) -> None:
        self.events = events
        self.gap = gap
        self.first_seen = anyio.Event()
        self.url = ""

    async def serve(self, tg: anyio.abc.TaskGroup) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self.url = f"http://127.0.0.1:{port}"
        tg.start_soon(self._run, listener)

    async def _run(self, listener: anyio.abc.SocketListener) -> None:
        async with listener:
            await listener.serve(self._handle)

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            await stream.send(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for i in range(self.events):
                if i == 1:
                    await self.first_seen.wait()
                event = f"data: {i}\n\n".encode()
                await stream.send(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                await anyio.sleep(self.gap)
            await stream.send(b"0\r\n\r\n")


@pytest.fixture
async def events() -> AsyncIterator[EventStream]:
    server = EventStream()
    async with anyio.create_task_group() as tg:
        await server.serve(tg)
        yield server
        tg.cancel_scope.cancel()


STREAM_POLICY = Policy(
    timeouts=Timeouts(read=1.0, attempt=0.3, total=30.0),
    breaker=None,
    bulkhead=Bulkhead(max_concurrent=1, max_wait=0),
)


@pytest.mark.parametrize("via", ["plain-client", "resilient-client"])
async def test_a_stream_longer_than_the_attempt_timeout_arrives_event_by_event(
    events: EventStream, via: str
) -> None:
    if via == "plain-client":
        transport = seawall.ResilientTransport("sse", STREAM_POLICY)
        client: httpx.AsyncClient = httpx.AsyncClient(transport=transport)
        bulkhead = transport.runtime.bulkhead
    else:
        client = seawall.ResilientClient("sse", policy=STREAM_POLICY)
        bulkhead = client.bulkhead  # type: ignore[attr-defined]
    assert bulkhead is not None
    got: list[bytes] = []
    async with client:
        with anyio.fail_after(5):
            async with client.stream("GET", events.url + "/events") as response:
                assert bulkhead.statistics().in_use == 1  # held while the stream is open
                # A second call meanwhile finds the bulkhead full: streams are capped.
                with pytest.raises(BulkheadFullError):
                    await client.get(events.url + "/other")
                async for chunk in response.aiter_raw():
                    got.append(chunk)
                    events.first_seen.set()
            assert bulkhead.statistics().in_use == 0  # given back at close
    assert b"".join(got) == b"".join(f"data: {i}\n\n".encode() for i in range(8))
    report = seawall.report_of(response)
    assert report is not None
    assert report.outcome == "success"


async def test_a_buffered_resilient_client_call_still_reads_the_body_inside_the_attempt(
    upstream: FaultyUpstream,
) -> None:
    upstream.route("/cut", Fault.truncated(), Fault.ok())
    async with seawall.ResilientClient(
        "x",
        base_url=upstream.url,
        policy=Policy(
            breaker=None,
            retry=seawall.Retry(
                attempts=2, backoff=seawall.Backoff(initial=0.0, jitter=False), budget=None
            ),
        ),
    ) as client:
        response = await client.get("/cut")
    assert response.status_code == 200
    assert upstream.count("/cut") == 2  # the broken body was retried


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_an_attempt_timeout_respects_a_shielded_cleanup() -> None:
    """httpcore closes a connection inside a shielded scope: the attempt timeout must
    not cut that close short (a raw Task.cancel() did, and leaked pooled connections)."""
    finished: list[bool] = []

    class ShieldedCleanup(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.3)
                finished.append(True)
            return httpx.Response(200)

    policy = Policy(timeouts=Timeouts(attempt=0.1, total=None), retry=None, breaker=None)
    async with seawall.ResilientClient(
        "repro", policy=policy, base_url="http://test", transport=ShieldedCleanup()
    ) as client:
        with contextlib.suppress(httpx.TimeoutException):
            await client.get("/")  # it may answer: no checkpoint came after the cut
    assert finished == [True]
