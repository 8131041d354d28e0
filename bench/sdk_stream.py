"""Time to the first chunk of an openai ``stream=True`` chat completion: SDK alone vs through seawall.

    python bench/sdk_stream.py              # full run (under a minute)
    python bench/sdk_stream.py --quick      # smoke run (a few seconds)
    python bench/sdk_stream.py --rounds 31 --calls 100

The fake API is a child process (``--serve``): an asyncio server on loopback
answering every request with a chat completion stream of server-sent events
(chunked, keep-alive, ``TCP_NODELAY``), its first event sent with the headers.
The client side is the real openai SDK with ``max_retries=0`` over

* a plain ``httpx2.AsyncClient`` (the SDK alone), and
* ``seawall.httpx2.ResilientClient`` with the LLM policy of docs/sdks.md
  (timeouts, retry with a budget, bulkhead, breaker; telemetry on, no
  OpenTelemetry SDK, structlog filtered at INFO to a null sink).

Time to first chunk is wall-clock time from ``create(..., stream=True)`` to the
first parsed chunk; the rest of the stream is then read and closed, untimed.
Calls run in pairs, one of each case back to back in a random order, so both
halves of a pair see the same speed phase of these 2-core machines; the table
gives each case's median and quartiles over all calls, and the median of the
within-pair differences. See docs/sdks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
import openai
import structlog
from _common import machine_summary, quantile, versions

import seawall
import seawall.httpx2

#: docs/sdks.md's policy for an LLM API.
POLICY = seawall.Policy(
    timeouts=seawall.Timeouts(connect=5, read=120, write=30, pool=5, attempt=120, total=180),
    retry=seawall.Retry(
        attempts=2,
        backoff=seawall.Backoff(initial=1.0, maximum=20.0),
        retry_statuses=frozenset({408, 429, 500, 502, 503, 504, 529}),
        max_retry_after=30,
    ),
    bulkhead=seawall.Bulkhead(max_concurrent=16, max_wait=1.0),
    breaker=seawall.CircuitBreaker(window="time", window_size=60, slow_call_duration=150),
)
MESSAGES: Any = [{"role": "user", "content": "hi"}]
WORDS = ["Hel", "lo", ", wor", "ld"]

PLAIN = "openai + httpx2.AsyncClient (SDK alone)"
SEAWALL = "openai + seawall.httpx2.ResilientClient"


# -- the fake API (child process) ---------------------------------------------------------


def _event(data: str) -> bytes:
    payload = f"data: {data}\n\n".encode()
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


def _chunk(text: str) -> str:
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-bench",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
        }
    )


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
FIRST = _event(_chunk(WORDS[0]))
REST = b"".join(_event(_chunk(w)) for w in WORDS[1:]) + _event("[DONE]") + b"0\r\n\r\n"


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            writer.write(HEAD + FIRST)
            await writer.drain()
            writer.write(REST)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _serve() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(_handle, sock=sock)
    print(sock.getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


# -- the client side ------------------------------------------------------------------------


def configure_structlog() -> None:
    """A null sink filtered at INFO, as an application's default setup filters."""
    structlog.configure(
        logger_factory=structlog.ReturnLoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,
    )


def first_chunk_timer(client: openai.AsyncOpenAI) -> Callable[[], Awaitable[float]]:
    async def once() -> float:
        t0 = time.perf_counter()
        stream = await client.chat.completions.create(
            model="gpt-bench", messages=MESSAGES, stream=True
        )
        chunks = stream.__aiter__()
        first = await chunks.__anext__()
        elapsed = time.perf_counter() - t0
        assert first.choices[0].delta.content == WORDS[0]
        async for _ in chunks:
            pass
        await stream.close()
        return elapsed

    return once


async def run(
    url: str, rounds: int, calls: int, seed: int
) -> tuple[dict[str, list[float]], list[float]]:
    """Times to first chunk (seconds) of each case, and the difference within each pair."""
    async with (
        httpx2.AsyncClient() as plain,
        seawall.httpx2.ResilientClient("openai", policy=POLICY) as resilient,
    ):
        cases = {
            PLAIN: first_chunk_timer(
                openai.AsyncOpenAI(
                    api_key="sk-bench", base_url=f"{url}/v1", http_client=plain, max_retries=0
                )
            ),
            SEAWALL: first_chunk_timer(
                openai.AsyncOpenAI(
                    api_key="sk-bench",
                    base_url=f"{url}/v1",
                    http_client=resilient,
                    max_retries=0,
                )
            ),
        }
        for once in cases.values():  # warm-up: connections, imports, lazy state
            for _ in range(20):
                await once()
        times: dict[str, list[float]] = {name: [] for name in cases}
        diffs: list[float] = []
        rng = random.Random(seed)
        order = list(cases)
        for _ in range(rounds):
            for _ in range(calls):
                # One call of each, back to back, in a random order: a pair
                # shares the machine's speed phase, and its difference is kept.
                rng.shuffle(order)
                pair = {name: await cases[name]() for name in order}
                for name, elapsed in pair.items():
                    times[name].append(elapsed)
                diffs.append(pair[SEAWALL] - pair[PLAIN])
        return times, diffs


def report(times: dict[str, list[float]], diffs: list[float]) -> None:
    print()
    print(f"{'time to first chunk':<45} {'median':>9} {'p25-p75':>19}")
    print("-" * 75)
    for name, values in times.items():
        ms = [v * 1e3 for v in values]
        spread = f"{quantile(ms, 0.25):.3f}-{quantile(ms, 0.75):.3f}"
        print(f"{name:<45} {statistics.median(ms):>6.3f} ms {spread:>16} ms")
    us = [d * 1e6 for d in diffs]
    spread = f"{quantile(us, 0.25):.0f}-{quantile(us, 0.75):.0f}"
    print(
        f"{'seawall - SDK alone (per pair)':<45} {statistics.median(us):>6.0f} us {spread:>16} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=100, help="pairs per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 50 pairs")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve())
        return
    if args.quick:
        args.rounds, args.calls = 2, 50
    configure_structlog()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        times, diffs = asyncio.run(
            run(f"http://127.0.0.1:{port}", args.rounds, args.calls, args.seed)
        )
    finally:
        server.terminate()
        server.wait()
    print(machine_summary())
    print(
        ", ".join(
            f"{k} {v}"
            for k, v in versions("seawall", "openai", "httpx2", "httpcore2", "anyio").items()
        )
    )
    print(f"{args.rounds * args.calls} pairs of calls (one of each case, in a random order)")
    report(times, diffs)


if __name__ == "__main__":
    main()
