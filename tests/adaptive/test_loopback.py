"""The adaptive limit against a real server on loopback: 8 workers, 10 ms each.

The upstream (adaptive_upstream.py, a process of its own) queues requests
for its 8 workers, so latency grows with the queue; it serves at most 800
calls a second. The client offers 1,000 a second, open loop, and refuses
what its bulkhead does not admit.

In one run: a static bulkhead of 100 first, then the adaptive limit, whose
server loses half its workers mid-run. Timing on a shared 2-core machine is
noisy (a busy neighbour stalls the client for a tenth of a second now and
then), so every figure is a median: of the in-flight gauge or of latencies
over seconds, and of the goodputs of single seconds; and the server's
capacity is what the static bulkhead got out of it in the same run (its
queue of ~90 keeps every worker busy), at most the nominal 800/s.
"""

from __future__ import annotations

import statistics
from typing import Any

import anyio
import pytest
from adaptive_loopback import RawClient, Record, UpstreamProcess, client, drive, guarded

import seawall
import seawall.telemetry

RATE = 1000.0  # offered calls a second
CAPACITY = 800.0  # 8 workers x 100 calls a second


def describe(name: str, rec: Record, t0: float, t1: float) -> str:
    lat = rec.latencies(t0, t1)
    flight = rec.in_flight(t0, t1)
    limits = rec.limits(t0, t1)
    return (
        f"{name} [{t0:g}, {t1:g}) s: goodput {rec.goodput(t0, t1):.0f}/s, "
        f"median latency {1000 * statistics.median(lat) if lat else float('nan'):.1f} ms, "
        f"in flight median {statistics.median(flight) if flight else '-'} "
        f"(min {min(flight, default='-')}, max {max(flight, default='-')}), "
        f"limit median {statistics.median(limits) if limits else '-'}, "
        f"refused {sum(1 for t in rec.rejected if t0 <= t < t1)}, errors {len(rec.errors)}"
    )


@pytest.fixture
def quiet() -> Any:
    # One structlog event per call would cost more than the calls.
    before = seawall.telemetry.disable()
    yield
    seawall.telemetry.configure(enabled=before.enabled)


@pytest.mark.slow  # ~20 s: 4 s static, 13 s adaptive, process start-up
def test_the_adaptive_limit_settles_near_capacity_and_follows_it_down(quiet: None) -> None:
    async def main() -> tuple[Record, Record, float]:
        upstream = UpstreamProcess(workers=8, service=0.010)
        raw = RawClient(upstream.port)
        try:
            static = Record()
            g = guarded("static", seawall.Bulkhead(max_concurrent=100))
            await drive((g, raw), rate=RATE, duration=4.0, record=static)
            capacity = min(CAPACITY, static.median_goodput(1, 4))
            adaptive = Record()
            bulkhead = seawall.Bulkhead(max_concurrent=100, adaptive=seawall.AdaptiveLimit())
            g = guarded("adaptive", bulkhead)
            await drive(
                (g, raw),
                rate=RATE,
                duration=13.0,
                record=adaptive,
                at=[(8.0, lambda: upstream.workers(4))],
            )
            return static, adaptive, capacity
        finally:
            raw.close()
            upstream.close()

    static, adaptive, capacity = anyio.run(main, backend="asyncio")
    report = "\n".join(
        [
            f"capacity (static 100's goodput, at most 800/s): {capacity:.0f}/s",
            *(describe("static 100", static, t, t + 1) for t in range(4)),
            *(describe("adaptive", adaptive, t, t + 1) for t in range(13)),
        ]
    )
    print(report)
    assert not static.errors, report
    assert not adaptive.errors, report

    # Settled within 5 s: in flight near the 8 workers, latency near the 10 ms
    # of service, and (nearly) everything the server can serve.
    assert 6 <= statistics.median(adaptive.in_flight(5, 8)) <= 16, report
    assert adaptive.median_latency(5, 8) < 0.030, report
    assert adaptive.median_goodput(4, 8) >= 0.9 * capacity, report

    # The static bulkhead of 100 in the same run: the queue is in the latency.
    assert statistics.median(static.in_flight(2, 4)) >= 50, report
    assert static.median_latency(2, 4) > max(0.060, 3 * adaptive.median_latency(5, 8)), report

    # Half the workers gone at 8 s: within 5 s the limit has followed them down.
    assert 2 <= statistics.median(adaptive.limits(11, 13)) <= 9, report
    assert statistics.median(adaptive.in_flight(11, 13)) <= 9, report
    assert adaptive.median_latency(11, 13) < 0.030, report
    assert adaptive.median_goodput(10, 13) >= 0.8 * capacity / 2, report


@pytest.mark.slow  # ~9 s: process start-up, 7 s of load
def test_through_the_http_client_too(quiet: None) -> None:
    # httpx costs ~1 ms of CPU a request on a slow shared core: a slower
    # server (8 workers, 40 ms: 200 calls a second) keeps the client from
    # measuring itself. In flight should settle as above: it depends on the
    # workers, not on the service time.
    async def main() -> Record:
        upstream = UpstreamProcess(workers=8, service=0.040)
        try:
            record = Record()
            bulkhead = seawall.Bulkhead(max_concurrent=60, adaptive=seawall.AdaptiveLimit())
            async with client(upstream.url, bulkhead) as http:
                await drive(http, rate=260.0, duration=7.0, record=record)
            return record
        finally:
            upstream.close()

    record = anyio.run(main, backend="asyncio")
    report = "\n".join(describe("http", record, t, t + 1) for t in range(7))
    print(report)
    assert not record.errors, report
    assert 6 <= statistics.median(record.in_flight(4, 7)) <= 16, report
    assert record.median_latency(4, 7) < 0.120, report
    assert record.median_goodput(3, 7) >= 0.8 * 200, report
