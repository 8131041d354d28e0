"""The soak: steady mixed load through one ResilientClient while the upstream's faults switch.

Shared by ``tests/chaos/test_soak.py`` (a minute in the suite) and
``bench/soak.py`` (ten minutes, by hand). ``run_soak`` drives ``workers``
closed-loop tasks (GET, PUT, POST with and without an Idempotency-Key) through
one client with the full policy (bulkhead, breaker, retry with budget,
stale-if-error fallback) against a FaultyUpstream whose fault changes every
``phase_seconds`` among every kind the chaos matrix knows, each applied to a
share of the requests; "refused" stops the server for the phase. It measures
memory and sockets and returns a :class:`SoakReport`; it asserts nothing, so
each caller judges the figures its own way.
"""

from __future__ import annotations

import collections
import os
import random
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import httpx

import seawall
from seawall.telemetry import configure as configure_telemetry
from seawall.testing._upstream import Fault, FaultyUpstream

__all__ = [
    "PHASES",
    "SoakReport",
    "make_policy",
    "open_sockets",
    "rss_bytes",
    "run_soak",
]

#: The fault phases, in order; the first (healthy) one is the warm-up. ``None``: refused.
PHASES: list[tuple[str, Fault | None]] = [
    ("healthy", Fault.ok()),
    ("delay-headers", Fault(delay=0.5, ratio=0.35, seed=1)),
    ("delay-body", Fault(body_delay=0.5, ratio=0.35, seed=2)),
    ("500", Fault(status=500, ratio=0.35, seed=3)),
    ("503-retry-after", Fault(status=503, headers={"Retry-After": "1"}, ratio=0.35, seed=4)),
    ("429", Fault(status=429, ratio=0.35, seed=5)),
    ("reset", Fault(reset=True, ratio=0.35, seed=6)),
    ("refused", None),
    ("blackhole", Fault(blackhole=True, ratio=0.2, seed=7)),
    ("truncated", Fault(truncate=True, ratio=0.35, seed=8)),
    ("invalid-http", Fault(invalid=True, ratio=0.35, seed=9)),
]

ITEMS = 20  # GET/PUT keys: the fallback cache holds one entry per GET URL
EXPECTED_ERRORS = (httpx.HTTPError, seawall.SeawallError)


def make_policy() -> seawall.Policy:
    # attempt (1 s) far above read (0.2 s): every timeout is an httpx one or the deadline.
    return seawall.Policy(
        timeouts=seawall.Timeouts(connect=0.5, read=0.2, write=0.5, pool=0.5, attempt=1.0, total=3.0),
        retry=seawall.Retry(
            attempts=3,
            backoff=seawall.Backoff(initial=0.02, maximum=0.2),
            budget=seawall.RetryBudget(ratio=0.3, min_per_second=20.0, window=10.0),
            max_retry_after=2.0,
        ),
        bulkhead=seawall.Bulkhead(max_concurrent=20, max_wait=0.1),
        breaker=seawall.CircuitBreaker(
            window_size=50,
            minimum_calls=20,
            failure_rate_threshold=0.6,
            open_duration=1.0,
            half_open_calls=5,
        ),
        fallback=seawall.Fallback(stale_if_error=3600.0, max_entries=256),
        pool=seawall.Pool(max_connections=40, max_keepalive=20),
    )  # fmt: skip


def rss_bytes() -> int:
    """The process's resident set size now (Linux), else its peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def open_sockets() -> int:
    """File descriptors of this process that are sockets (server side included)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:  # closed between listdir and readlink
            continue
    return count


@dataclass
class SoakReport:
    seconds: float = 0.0
    phases: list[str] = field(default_factory=list)
    calls: int = 0
    #: calls begun in each phase, by the phase's name
    calls_by_phase: collections.Counter[str] = field(default_factory=collections.Counter)
    #: report.outcome of every call that got one
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    #: what the callers got: "status-200", "fallback-cache", an error type's name
    results: collections.Counter[str] = field(default_factory=collections.Counter)
    #: errors out of a call that are neither httpx.HTTPError nor seawall.SeawallError
    escaped: list[BaseException] = field(default_factory=list)
    #: expected errors that carried no CallReport
    unreported: list[BaseException] = field(default_factory=list)
    workers_started: int = 0
    workers_finished: int = 0
    rss_start: int = 0
    rss_after_warmup: int = 0
    rss_end: int = 0
    sockets_before: int = 0
    sockets_peak: int = 0
    sockets_after: int = 0
    server_connections_after: int = 0
    server_connections_closed: bool = False
    bulkhead_end: seawall.BulkheadStatistics | None = None
    breaker_end: seawall.BreakerStatistics | None = None
    pool_end: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        mib = 1024 * 1024
        lines = [
            f"soak: {self.seconds:.0f} s, {self.calls} calls, phases: {', '.join(self.phases)}",
            f"  calls begun per phase: {dict(self.calls_by_phase)}",
            f"  workers started/finished: {self.workers_started}/{self.workers_finished}",
            f"  RSS: start {self.rss_start / mib:.1f} MiB, after warm-up "
            f"{self.rss_after_warmup / mib:.1f} MiB, end {self.rss_end / mib:.1f} MiB "
            f"(growth after warm-up {(self.rss_end - self.rss_after_warmup) / mib:+.1f} MiB)",
            f"  sockets: before {self.sockets_before}, peak {self.sockets_peak}, "
            f"after close {self.sockets_after}; server connections after close "
            f"{self.server_connections_after}",
            f"  bulkhead at the end: {self.bulkhead_end}",
            f"  breaker at the end: {self.breaker_end}",
            f"  pool at the end: {self.pool_end}",
            f"  outcomes: {dict(self.outcomes.most_common())}",
            f"  results: {dict(self.results.most_common())}",
            f"  escaped errors: {len(self.escaped)} {self.escaped[:5]!r}",
            f"  errors without a report: {len(self.unreported)} {self.unreported[:5]!r}",
        ]
        return "\n".join(lines)


async def run_soak(
    seconds: float,
    phase_seconds: float,
    *,
    workers: int = 30,
    seed: int = 0,
    think: float = 0.01,
    on_phase: Callable[[str, float], object] | None = None,
) -> SoakReport:
    """Drive the load for ``seconds``; the fault changes every ``phase_seconds``."""
    report = SoakReport()
    report.rss_start = rss_bytes()
    port = FaultyUpstream.refused_port()
    upstream = FaultyUpstream(port=port).start()
    previous_telemetry = configure_telemetry(failure_log_level="off")  # a line per failure
    try:
        report.sockets_before = open_sockets()
        await _drive(upstream, report, seconds, phase_seconds, workers, seed, think, on_phase)
        report.sockets_after = open_sockets()
    finally:
        configure_telemetry(**{"failure_log_level": previous_telemetry.failure_log_level})
        await anyio.to_thread.run_sync(upstream.stop)
    return report


async def _drive(
    upstream: FaultyUpstream,
    report: SoakReport,
    seconds: float,
    phase_seconds: float,
    workers: int,
    seed: int,
    think: float,
    on_phase: Callable[[str, float], object] | None,
) -> None:
    started = time.monotonic()
    stop_at = started + seconds
    client = seawall.ResilientClient("soak", policy=make_policy(), base_url=upstream.url)

    async def call(rng: random.Random, worker: int, n: int) -> None:
        report.calls_by_phase[report.phases[-1] if report.phases else PHASES[0][0]] += 1
        item = rng.randrange(ITEMS)
        kind = rng.choice(("GET", "GET", "PUT", "POST-key", "POST-nokey"))
        try:
            if kind == "GET":
                response = await client.get(f"/items/{item}")
            elif kind == "PUT":
                response = await client.put(f"/items/{item}", json={"n": n})
            elif kind == "POST-key":
                response = await client.post(
                    "/orders", json={"n": n}, idempotency_key=f"w{worker}-{n}"
                )
            else:
                response = await client.post("/events", json={"n": n})
        except EXPECTED_ERRORS as exc:
            report.results[type(exc).__name__] += 1
            call_report = seawall.report_of(exc)
            if call_report is None:
                report.unreported.append(exc)
            else:
                report.outcomes[call_report.outcome] += 1
        except Exception as exc:
            report.escaped.append(exc)
        else:
            call_report = seawall.report_of(response)
            if call_report is not None:
                report.outcomes[call_report.outcome] += 1
            if call_report is not None and call_report.fallback:
                report.results[f"fallback-{call_report.fallback}"] += 1
            else:
                report.results[f"status-{response.status_code}"] += 1
        report.calls += 1

    async def worker(index: int) -> None:
        report.workers_started += 1
        rng = random.Random(seed * 1000 + index)
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            await call(rng, index, n)
            await anyio.sleep(rng.uniform(0, 2 * think))
        report.workers_finished += 1

    async def switcher() -> None:
        phase = 0
        while True:
            name, fault = PHASES[phase % len(PHASES)]
            report.phases.append(name)
            if on_phase is not None:
                on_phase(name, time.monotonic() - started)
            if fault is None:
                await anyio.to_thread.run_sync(upstream.stop)
            else:
                upstream.set_default(fault)
            # Phases end on a schedule fixed at the start: time spent switching
            # (stopping the server takes a thread) never pushes the later
            # phases past the end of the run.
            phase_end = min(stop_at, started + (phase + 1) * phase_seconds)
            try:
                while time.monotonic() < phase_end:
                    await anyio.sleep(min(0.25, max(0.0, phase_end - time.monotonic())))
                    report.sockets_peak = max(report.sockets_peak, open_sockets())
                    upstream.clear()  # the request log would grow for the whole run
            finally:
                if fault is None:
                    upstream.start()
            if phase == 0:
                report.rss_after_warmup = rss_bytes()
            if time.monotonic() >= stop_at:
                return
            phase += 1

    async with client:
        # Warm the cache: a good answer for every GET URL.
        for item in range(ITEMS):
            await client.get(f"/items/{item}")
        with anyio.fail_after(seconds + 30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(switcher)
                for index in range(workers):
                    tg.start_soon(worker, index)
        report.rss_end = rss_bytes()
        report.bulkhead_end = client.bulkhead.statistics()
        report.breaker_end = client.breaker.statistics()
        report.pool_end = client.resilient_transport.pool_statistics()
    report.seconds = time.monotonic() - started
    report.server_connections_closed = await anyio.to_thread.run_sync(
        upstream.wait_for_open_connections, 0
    )
    report.server_connections_after = upstream.open_connections
