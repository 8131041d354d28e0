"""Static bulkheads against an adaptive limit, in one run; and the adaptive bookkeeping's cost.

    python bench/adaptive.py            # 3 rounds of 8 s per configuration
    python bench/adaptive.py --quick    # 1 round of 5 s

The upstream (tests/adaptive/adaptive_upstream.py, a process of its own) has
8 workers serving one FIFO queue for 10 ms a request: 800 calls a second at
most, and latency grows with its queue. The client offers 1,000 calls a
second, open loop, through ``seawall.guard`` around the keep-alive HTTP/1.1
client of tests/adaptive (httpx would cost ~1 ms of CPU a request on this
machine and measure itself); a call over the limit is refused at once.
Configurations: static bulkheads of 4, 8, 32 and 100, ``AdaptiveLimit()``
(gradient) and ``AdaptiveLimit(algorithm="aimd")``, every one in every round,
in a shuffled order. Each run's first 3 s are left out (the adaptive limit
settling); reported: goodput (answers a second), p50 and p99 latency of the
answered calls, calls in flight (median of a gauge read every 20 ms), the
share refused; the median over rounds.

Then the bookkeeping: CPU time per call of ``try_acquire`` + ``observe`` +
``release`` on an adaptive bulkhead against a static one (the difference is
what the adaptive limit adds to every attempt), and ``Controller.sample``
alone. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from _common import machine_summary, quantile

import seawall
import seawall.telemetry
from seawall._adaptive import Controller
from seawall._bulkhead import BulkheadHandle

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "adaptive"))
from adaptive_loopback import RawClient, Record, UpstreamProcess, drive, guarded

RATE = 1000.0
SETTLE = 3.0
CONFIGS: dict[str, seawall.Bulkhead] = {
    "static 4": seawall.Bulkhead(max_concurrent=4),
    "static 8": seawall.Bulkhead(max_concurrent=8),
    "static 32": seawall.Bulkhead(max_concurrent=32),
    "static 100": seawall.Bulkhead(max_concurrent=100),
    "adaptive (gradient)": seawall.Bulkhead(max_concurrent=100, adaptive=seawall.AdaptiveLimit()),
    "adaptive (aimd)": seawall.Bulkhead(
        max_concurrent=100, adaptive=seawall.AdaptiveLimit(algorithm="aimd")
    ),
}


async def one_run(raw: RawClient, name: str, duration: float) -> dict[str, float]:
    g = guarded(f"bench-{name}-{random.random()}", CONFIGS[name])
    record = Record()
    await drive((g, raw), rate=RATE, duration=duration, record=record)
    lat = sorted(record.latencies(SETTLE, duration))
    offered = RATE * (duration - SETTLE)
    refused = sum(1 for t in record.rejected if SETTLE <= t < duration)
    return {
        "goodput": record.goodput(SETTLE, duration),
        "p50_ms": 1000 * quantile(lat, 0.50),
        "p99_ms": 1000 * quantile(lat, 0.99),
        "in_flight": statistics.median(record.in_flight(SETTLE, duration)),
        "refused": refused / offered,
        "errors": len(record.errors),
    }


async def loopback(rounds: int, duration: float) -> dict[str, list[dict[str, float]]]:
    upstream = UpstreamProcess(workers=8, service=0.010)
    raw = RawClient(upstream.port)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
    try:
        for r in range(rounds):
            order = list(CONFIGS)
            random.shuffle(order)
            for name in order:
                results[name].append(await one_run(raw, name, duration))
                print(f"  round {r + 1}: {name} done", file=sys.stderr)
    finally:
        raw.close()
        upstream.close()
    return results


async def bookkeeping(rounds: int, n: int) -> dict[str, float]:
    """CPU ns per call: acquire + observe + release, adaptive and static; sample() alone.

    In an event loop (the limiter belongs to one), but with no await: nothing else runs.
    """
    static = BulkheadHandle(seawall.Bulkhead(max_concurrent=100), dependency="static")
    adaptive = BulkheadHandle(
        seawall.Bulkhead(max_concurrent=100, adaptive=seawall.AdaptiveLimit()),
        dependency="adaptive",
    )
    controller = Controller(seawall.AdaptiveLimit(), max_concurrent=100, now=time.monotonic())

    def cycle(h: BulkheadHandle) -> int:
        t0 = time.thread_time_ns()
        for _ in range(n):
            token = h.try_acquire()
            h.observe(0.010, False)
            h.release(token)  # type: ignore[arg-type]
        return time.thread_time_ns() - t0

    def samples() -> int:
        now = time.monotonic
        t0 = time.thread_time_ns()
        for _ in range(n):
            controller.sample(now(), 0.010, False, 10)
        return time.thread_time_ns() - t0

    found: dict[str, list[float]] = {"static": [], "adaptive": [], "extra": [], "sample": []}
    for _ in range(rounds):
        s, a, c = cycle(static), cycle(adaptive), samples()
        found["static"].append(s / n)
        found["adaptive"].append(a / n)
        found["extra"].append((a - s) / n)
        found["sample"].append(c / n)
    return {k: statistics.median(v) for k, v in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 5 s")
    args = parser.parse_args()
    rounds, duration = (1, 5.0) if args.quick else (3, 8.0)
    seawall.telemetry.disable()
    print(machine_summary())
    results = anyio.run(loopback, rounds, duration, backend="asyncio")
    print(
        f"\n8 workers x 10 ms (800/s), {RATE:.0f} calls/s offered, "
        f"{rounds} round(s) of {duration:g} s (first {SETTLE:g} s left out), medians\n"
    )
    print("| bulkhead | goodput /s | % of 800/s | p50 ms | p99 ms | in flight | refused |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in results.items():

        def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        print(
            f"| {name} | {med('goodput'):.0f} | {100 * med('goodput') / 800:.0f} % "
            f"| {med('p50_ms'):.1f} | {med('p99_ms'):.1f} | {med('in_flight'):.0f} "
            f"| {100 * med('refused'):.0f} % |"
        )
        if any(r["errors"] for r in runs):
            print(f"  ({name}: {sum(r['errors'] for r in runs)} errors)")
    cost = anyio.run(bookkeeping, 7, 200_000, backend="asyncio")
    print("\nbookkeeping, CPU per call (median of 7 rounds of 200,000)\n")
    print("| | ns |")
    print("|---|---|")
    print(f"| try_acquire + observe + release, static | {cost['static']:.0f} |")
    print(f"| try_acquire + observe + release, adaptive | {cost['adaptive']:.0f} |")
    print(f"| the adaptive limit's share | {cost['extra']:.0f} |")
    print(f"| Controller.sample alone | {cost['sample']:.0f} |")


if __name__ == "__main__":
    main()
