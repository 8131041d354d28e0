"""Open-loop load through seawall against ``adaptive_upstream.py`` in a child process.

Two clients: seawall's ``ResilientClient`` (httpx), and ``seawall.guard``
around :class:`RawClient`, a keep-alive HTTP/1.1 client on asyncio streams
that costs ~20 us a request where httpx costs ~1 ms on a slow, shared CI
core: only the second can offer 1,000 requests a second there and still
measure the upstream rather than itself. Both run through the same engine,
bulkhead and adaptive limit.
"""

from __future__ import annotations

import asyncio
import collections
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio

import seawall

UPSTREAM = Path(__file__).with_name("adaptive_upstream.py")


class UpstreamProcess:
    """``adaptive_upstream.py`` as a child process; ``workers(n)`` changes its capacity."""

    def __init__(self, workers: int, service: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(UPSTREAM), str(workers), str(service)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        assert line[:1] == ["READY"], line
        self.port = int(line[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def workers(self, n: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"workers {n}\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class Record:
    """What one run saw, each series stamped with seconds since the run began."""

    answered: list[tuple[float, float]] = field(default_factory=list)  # (end, latency)
    rejected: list[float] = field(default_factory=list)  # ends
    errors: list[tuple[float, str]] = field(default_factory=list)
    gauge: list[tuple[float, int, int]] = field(default_factory=list)  # (t, in flight, limit)

    def goodput(self, t0: float, t1: float) -> float:
        return sum(1 for end, _ in self.answered if t0 <= end < t1) / (t1 - t0)

    def median_goodput(self, t0: int, t1: int) -> float:
        """The median of the goodputs of each second in [t0, t1): a stalled second is no verdict."""
        return statistics.median(self.goodput(t, t + 1) for t in range(t0, t1))

    def latencies(self, t0: float, t1: float) -> list[float]:
        return [lat for end, lat in self.answered if t0 <= end < t1]

    def median_latency(self, t0: float, t1: float) -> float:
        return statistics.median(self.latencies(t0, t1))

    def in_flight(self, t0: float, t1: float) -> list[int]:
        return [n for t, n, _ in self.gauge if t0 <= t < t1]

    def limits(self, t0: float, t1: float) -> list[int]:
        return [lim for t, _, lim in self.gauge if t0 <= t < t1]


class RawClient:
    """GET / over a pool of keep-alive connections; closes a connection whose exchange was cut."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: collections.deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            collections.deque()
        )

    async def get(self) -> int:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        ok = False
        try:
            writer.write(b"GET / HTTP/1.1\r\nhost: upstream\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)  # content-length: 2
            ok = True
        finally:
            if ok:
                self.idle.append((reader, writer))
            else:
                writer.close()
        return int(head.split(b" ", 2)[1])

    def close(self) -> None:
        while self.idle:
            self.idle.pop()[1].close()


def guarded(name: str, bulkhead: seawall.Bulkhead) -> seawall.Guard:
    policy = seawall.Policy(
        timeouts=seawall.Timeouts(attempt=2.0, total=2.0),
        retry=None,
        breaker=None,
        bulkhead=bulkhead,
    )
    return seawall.guard(name, policy, registry=seawall.Registry())


def client(url: str, bulkhead: seawall.Bulkhead) -> seawall.ResilientClient:
    policy = seawall.Policy(
        timeouts=seawall.Timeouts(attempt=2.0, total=2.0),
        retry=None,
        breaker=None,
        bulkhead=bulkhead,
        pool=seawall.Pool(max_connections=bulkhead.max_concurrent + 10),
    )
    return seawall.ResilientClient("upstream", policy=policy, base_url=url)


async def drive(
    target: seawall.ResilientClient | tuple[seawall.Guard, RawClient],
    *,
    rate: float,
    duration: float,
    record: Record,
    at: list[tuple[float, object]] = (),  # type: ignore[assignment]
    gauge_every: float = 0.02,
) -> None:
    """Send GET / at *rate* a second for *duration* seconds; run each ``(t, fn)`` of *at* at t."""
    start = time.monotonic()
    actions = sorted(at, key=lambda a: a[0])
    if isinstance(target, tuple):
        g, raw = target
        bulkhead = g.bulkhead
        assert bulkhead is not None

        async def send() -> int:
            return await g.call(raw.get)
    else:
        http = target
        bulkhead = http.bulkhead

        async def send() -> int:
            return (await http.get("/")).status_code

    async def one() -> None:
        t0 = time.monotonic()
        try:
            status = await send()
        except seawall.BulkheadFullError:
            record.rejected.append(time.monotonic() - start)
            return
        except Exception as exc:
            record.errors.append((time.monotonic() - start, type(exc).__name__))
            return
        end = time.monotonic()
        if status == 200:
            record.answered.append((end - start, end - t0))
        else:
            record.errors.append((end - start, str(status)))

    async def gauge() -> None:
        while (now := time.monotonic() - start) < duration:
            s = bulkhead.statistics()
            record.gauge.append((now, s.in_use, s.limit))
            await anyio.sleep(gauge_every)

    async with anyio.create_task_group() as tg:
        tg.start_soon(gauge)
        sent = 0
        while (now := time.monotonic() - start) < duration:
            while actions and actions[0][0] <= now:
                actions.pop(0)[1]()  # type: ignore[operator]
            due = int(now * rate)
            while sent < due:
                tg.start_soon(one)
                sent += 1
            await anyio.sleep(0.002)
