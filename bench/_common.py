"""Shared helpers for seawall's benchmarks (bench/*.py scripts, not tests).

The machines these run on have 2 cores and switch between a fast phase and one
1.5-2x slower within seconds, so a benchmark here never compares absolute times
taken at different moments. Instead:

* every case runs in every round, in a fresh shuffled order (interleaving);
* a case's figure is the median of its per-round times;
* a ratio is taken between two cases *within each round* (same speed phase),
  and the median of those per-round ratios is reported;
* time is the thread's CPU time (``time.thread_time_ns``), so that a batch
  during which other processes took the cores is not charged for their work;
  wall-clock time is kept too, and their quotient shows how contended the run
  was.
"""

from __future__ import annotations

import gc
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata

__all__ = [
    "Case",
    "Result",
    "contention",
    "machine_summary",
    "measure",
    "print_table",
    "quantile",
    "rss_bytes",
    "versions",
]


@dataclass
class Case:
    """One row of a benchmark table.

    ``run(n)`` makes *n* calls and returns how many of them were rejected
    (raised the rejection the case is about); the harness checks that count
    against ``rejects`` so that a case cannot silently measure the wrong path.
    ``ref`` names the case this row's ratio is taken against (a seawall row).
    ``before`` runs, untimed, before each timed batch.
    """

    name: str
    group: str
    run: Callable[[int], Awaitable[int]]
    ref: str | None = None
    rejects: bool = False
    note: str = ""
    before: Callable[[], Awaitable[None]] | None = None


@dataclass
class Result:
    case: Case
    #: CPU microseconds per call, one figure per round.
    per_call_us: list[float] = field(default_factory=list)
    #: Wall-clock microseconds per call, one figure per round.
    wall_us: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    best_ratio: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.per_call_us)

    @property
    def best(self) -> float:
        return min(self.per_call_us)

    @property
    def p25(self) -> float:
        return quantile(self.per_call_us, 0.25)

    @property
    def p75(self) -> float:
        return quantile(self.per_call_us, 0.75)

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (no numpy needed)."""
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


async def measure(
    cases: Sequence[Case],
    *,
    rounds: int,
    calls: int,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Result]:
    """Run every case *calls* times per round, *rounds* rounds, shuffled each round."""
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ValueError("case names must be unique")
    rng = random.Random(seed)
    results = {c.name: Result(c) for c in cases}
    # Warm-up: fill caches, specialise bytecode, create lazy state.
    for case in cases:
        await _timed(case, min(calls, 200))
    order = list(cases)
    for r in range(rounds):
        rng.shuffle(order)
        gc.collect()
        for case in order:
            cpu, wall = await _timed(case, calls)
            results[case.name].per_call_us.append(cpu)
            results[case.name].wall_us.append(wall)
        if progress is not None:
            progress(r)
    for res in results.values():
        ref = res.case.ref
        if ref is not None and ref != res.case.name:
            base = results[ref].per_call_us
            res.ratios = [a / b for a, b in zip(res.per_call_us, base, strict=True)]
            res.best_ratio = res.best / results[ref].best
    return results


def contention(results: dict[str, Result]) -> float:
    """Total wall-clock time over total CPU time of the timed batches (1.0: none)."""
    wall = sum(sum(r.wall_us) for r in results.values())
    cpu = sum(sum(r.per_call_us) for r in results.values())
    return wall / cpu


async def _timed(case: Case, n: int) -> tuple[float, float]:
    """CPU and wall-clock microseconds per call of one batch of *n* calls."""
    if case.before is not None:
        await case.before()
    w0 = time.perf_counter_ns()
    t0 = time.thread_time_ns()
    rejected = await case.run(n)
    elapsed = time.thread_time_ns() - t0
    wall = time.perf_counter_ns() - w0
    expected = n if case.rejects else 0
    if rejected != expected:
        raise AssertionError(f"{case.name}: {rejected} of {n} calls rejected, expected {expected}")
    return elapsed / n / 1000.0, wall / n / 1000.0


def print_table(results: dict[str, Result], groups: Sequence[str]) -> None:
    """A plain-text table, one section per group, in the order the cases were given."""
    header = f"{'case':<60} {'median':>7} {'p25-p75':>13} {'best':>7}  {'x seawall':>9} {'(best)':>6}  vs"
    for group in groups:
        print()
        print(group)
        print(header)
        print("-" * len(header))
        for res in results.values():
            if res.case.group != group:
                continue
            ratio = res.ratio
            ratio_s = f"{ratio:9.2f}" if ratio is not None else f"{'-':>9}"
            best_s = f"{res.best_ratio:6.2f}" if res.best_ratio is not None else f"{'':>6}"
            vs = res.case.ref if ratio is not None else ""
            spread = f"{res.p25:.2f}-{res.p75:.2f}"
            print(
                f"{res.case.name:<60} {res.median:>7.2f} {spread:>13} {res.best:>7.2f}  "
                f"{ratio_s} {best_s}  {vs}"
            )
            if res.case.note:
                print(f"    ({res.case.note})")


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def versions(*dists: str) -> dict[str, str]:
    out = {}
    for d in dists:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = "not installed"
    return out


def machine_summary() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{platform.python_implementation()} {platform.python_version()} on "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores"
        + (f" ({cpu})" if cpu else "")
        + f"; argv: {' '.join(sys.argv[1:]) or '(defaults)'}"
    )
