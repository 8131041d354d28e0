"""The long soak (not run in CI): steady mixed load while the upstream's faults switch.

``python bench/soak.py --minutes 10`` drives 30 closed-loop tasks (GET, PUT,
POST with and without an Idempotency-Key) through one ResilientClient with the
full policy (bulkhead, breaker, retry with budget, stale-if-error fallback)
against a loopback FaultyUpstream whose fault switches every 30 s through every
kind of the chaos matrix (the same code as ``tests/chaos/test_soak.py``, from
``tests/chaos/chaos_soak.py``). It prints RSS at the start, after the warm-up
and at the end, the open sockets, the bulkhead's slots in use at the end (must
be 0) and every error that escaped; the exit status is 1 if a check failed.

Options: ``--minutes`` (10), ``--phase-seconds`` (30), ``--workers`` (30),
``--backend`` (asyncio or trio), ``--seed`` (0), ``--rss-bound-mib`` (30).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "chaos"))

from chaos_soak import SoakReport, make_policy, run_soak


def checks(report: SoakReport, workers: int, rss_bound_mib: float) -> list[str]:
    """The soak's verdict: one line per failed check."""
    failed = []
    max_connections = make_policy().pool.max_connections
    growth = (report.rss_end - report.rss_after_warmup) / (1024 * 1024)
    if growth >= rss_bound_mib:
        failed.append(f"RSS grew {growth:.1f} MiB after the warm-up (bound {rss_bound_mib})")
    if report.sockets_after > report.sockets_before:
        failed.append(f"sockets: {report.sockets_before} before, {report.sockets_after} after")
    if report.sockets_peak > report.sockets_before + 2 * max_connections + 10:
        failed.append(f"sockets peaked at {report.sockets_peak}")
    if not report.server_connections_closed:
        failed.append(f"{report.server_connections_after} server connections left open")
    if report.bulkhead_end is None or report.bulkhead_end.in_use or report.bulkhead_end.waiting:
        failed.append(f"bulkhead not empty at the end: {report.bulkhead_end}")
    if report.breaker_end is None or report.breaker_end.half_open_permits_in_use:
        failed.append(f"half-open permits held at the end: {report.breaker_end}")
    if report.pool_end.get("in_flight") or report.pool_end.get(
        "connections"
    ) != report.pool_end.get("idle"):
        failed.append(f"pool busy at the end: {report.pool_end}")
    if report.escaped:
        failed.append(f"{len(report.escaped)} errors escaped: {report.escaped[:10]!r}")
    if report.unreported:
        failed.append(f"{len(report.unreported)} errors without a CallReport")
    if report.workers_finished != workers:
        failed.append(f"only {report.workers_finished} of {workers} workers finished")
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--phase-seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=30)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rss-bound-mib", type=float, default=30.0)
    args = parser.parse_args()
    # httpx's request-body iterator warns on trio when a cancellation cuts it (encode/httpx#3686).
    warnings.filterwarnings("ignore", "Async generator 'httpx._content.ByteStream", ResourceWarning)

    def progress(phase: str, at: float) -> None:
        print(f"[{at:7.1f} s] phase {phase}", flush=True)

    report = anyio.run(
        lambda: run_soak(
            args.minutes * 60,
            args.phase_seconds,
            workers=args.workers,
            seed=args.seed,
            on_phase=progress,
        ),
        backend=args.backend,
    )
    print(report.summary())
    failed = checks(report, args.workers, args.rss_bound_mib)
    for line in failed:
        print(f"FAILED: {line}")
    print("OK" if not failed else f"{len(failed)} check(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
