"""A one-minute soak in the suite: steady mixed load while the upstream's faults switch.

30 closed-loop tasks send GET, PUT, POST with and without an Idempotency-Key
through one ResilientClient with the full policy, while the upstream's fault
changes every ~5 s through every kind in the chaos matrix (see
``chaos_soak.PHASES``). Afterwards: memory grew within bounds after the
warm-up, no socket outlived the client, no slot or permit is held, every task
finished, and only httpx or seawall errors reached the callers.

``SEAWALL_SOAK_SECONDS`` sets the duration (default 60); ``bench/soak.py`` is
the ten-minute version.
"""

from __future__ import annotations

import os

import pytest
from chaos_soak import PHASES, make_policy, run_soak

pytestmark = pytest.mark.anyio

SECONDS = float(os.environ.get("SEAWALL_SOAK_SECONDS", "60"))
WORKERS = 30
MIB = 1024 * 1024
#: Generous: the RSS after the warm-up may grow this much by the end.
RSS_GROWTH_BOUND = 30 * MIB


@pytest.mark.slow
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_soak_under_switching_faults_leaks_nothing() -> None:
    report = await run_soak(SECONDS, phase_seconds=SECONDS / len(PHASES), workers=WORKERS)
    print(report.summary())

    # Every task finished, and only the expected kinds of error reached a caller.
    assert report.workers_started == report.workers_finished == WORKERS
    assert not report.escaped, report.escaped[:5]
    assert not report.unreported, report.unreported[:5]
    assert report.seconds < SECONDS + 10, "the load did not stop on time"

    # Every phase ran (their ends are fixed from the start, so none is pushed
    # out of the run), in order, under steady load: a call ends within the
    # policy's total deadline, shorter than a phase, so every worker begins
    # calls in every phase, however slow the machine.
    assert report.phases == [name for name, _ in PHASES], report.phases
    total = make_policy().timeouts.total
    assert total is not None
    least = WORKERS if SECONDS / len(PHASES) > total + 1 else 1
    for name in report.phases:
        assert report.calls_by_phase[name] >= least, (name, report.calls_by_phase)

    # The stack answered both ways, and to faults of every kind: stale answers,
    # unknown outcomes, exhausted retries, an open breaker.
    assert report.outcomes["success"] > 0, report.outcomes
    for outcome in ("outcome_unknown", "retry_exhausted", "circuit_open"):
        assert report.outcomes[outcome] > 0, (outcome, report.outcomes)
    assert report.results["fallback-cache"] > 0, report.results

    # Nothing held, nothing leaked.
    assert report.bulkhead_end is not None
    assert (report.bulkhead_end.in_use, report.bulkhead_end.waiting) == (0, 0)
    assert report.breaker_end is not None
    assert report.breaker_end.half_open_permits_in_use == 0
    assert report.pool_end["in_flight"] == 0
    assert report.pool_end["connections"] == report.pool_end["idle"], report.pool_end
    assert report.server_connections_closed, report.server_connections_after
    assert report.sockets_after <= report.sockets_before, (
        report.sockets_before,
        report.sockets_after,
    )
    # Client and server ends of every pooled connection, at most, on top of the baseline.
    assert (
        report.sockets_peak <= report.sockets_before + 2 * make_policy().pool.max_connections + 10
    )
    assert report.rss_end - report.rss_after_warmup < RSS_GROWTH_BOUND, report.summary()
