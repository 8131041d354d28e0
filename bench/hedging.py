"""Tail latency with and without hedged requests, in one run.

    python bench/hedging.py            # 3 rounds of 600 calls per configuration
    python bench/hedging.py --quick    # 1 round of 300

The upstream (``FaultyUpstream`` on loopback) answers 5% of requests after
1 s and the rest at once, with a fixed seed, so every configuration meets the
same slow requests in the same order. 16 tasks share the calls. Configurations:
no hedging, ``Hedge(delay=0.05)``, and ``Hedge(delay_from="p95")`` (the p95 of
recent latencies, bounded by 10 ms-1 s). Reported per configuration: p50,
p99, p99.9 and the extra requests the upstream saw, as a share of calls. See
docs/performance.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import anyio
from _common import machine_summary, quantile

import seawall
from seawall import Hedge, Policy, Retry
from seawall.testing import Fault, FaultyUpstream

TASKS = 16
NO_WAIT = seawall.Backoff(initial=0.0, maximum=0.0, jitter=False)
CONFIGS: dict[str, Hedge | None] = {
    "no hedging": None,
    "Hedge(delay=0.05)": Hedge(delay=0.05),
    "Hedge(delay_from='p95')": Hedge(delay_from="p95", min_delay=0.01, max_delay=1.0),
}


async def run(upstream: FaultyUpstream, hedge: Hedge | None, calls: int) -> dict[str, Any]:
    upstream.reset()
    upstream.route("/q", dataclasses.replace(Fault.latency(1.0), ratio=0.05, seed=1234))
    policy = Policy(
        hedge=hedge,
        retry=Retry(attempts=2, backoff=NO_WAIT),
        breaker=None,
        pool=seawall.Pool(max_connections=64),
    )
    latencies: list[float] = []
    async with seawall.ResilientClient("bench", base_url=upstream.url, policy=policy) as client:
        # Warm-up: connections, and the p95 estimate's first observations.
        for _ in range(40):
            await client.get("/warm")
        todo = iter(range(calls))

        async def worker() -> None:
            for _ in todo:
                t0 = time.perf_counter()
                response = await client.get("/q")
                latencies.append(time.perf_counter() - t0)
                assert response.status_code == 200

        async with anyio.create_task_group() as tg:
            for _ in range(TASKS):
                tg.start_soon(worker)
    sent = upstream.count("/q")
    return {
        "p50": quantile(latencies, 0.5),
        "p99": quantile(latencies, 0.99),
        "p999": quantile(latencies, 0.999),
        "extra": (sent - calls) / calls,
    }


async def main(rounds: int, calls: int) -> None:
    print(machine_summary())
    print(f"{calls} calls x {rounds} rounds, {TASKS} tasks; 5% of requests take 1 s\n")
    figures: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    with FaultyUpstream() as upstream:
        for _ in range(rounds):
            for name, hedge in CONFIGS.items():
                figures[name].append(await run(upstream, hedge, calls))
    print(f"{'configuration':28} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'extra':>7}")
    for name, rows in figures.items():

        def med(key: str, rows: list[dict[str, Any]] = rows) -> float:
            return sorted(r[key] for r in rows)[len(rows) // 2]

        print(
            f"{name:28} {med('p50') * 1000:8.1f} {med('p99') * 1000:8.1f} "
            f"{med('p999') * 1000:9.1f} {med('extra'):7.1%}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    anyio.run(main, 1 if args.quick else 3, 300 if args.quick else 600)
