"""Gauges read breakers on the metrics reader's thread, and reading changes nothing.

OpenTelemetry runs observable-gauge callbacks on whichever thread collects (a
PeriodicExportingMetricReader's, a Prometheus scrape's). seawall's callbacks
read ``state`` and ``statistics()``: if reading made the OPEN -> HALF_OPEN
transition, a scrape would change the breaker, unlocked, and run its listeners
off the event loop.
"""

from __future__ import annotations

import threading

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from telemetry_support import metrics, unique, until, value

import seawall
from seawall import BreakerState, Transition
from seawall.testing import ManualClock

pytestmark = pytest.mark.anyio

OPEN_FOR = 10.0
CLOSED, HALF_OPEN, OPEN = 0, 1, 2  # the seawall.breaker.state gauge's values


class Scraper:
    """Collects every metric in a loop on its own thread, as an exporter would."""

    def __init__(self, reader: InMemoryMetricReader, dependency: str) -> None:
        self._reader = reader
        self._dependency = dependency
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-reader", daemon=True)
        #: The breaker-state gauge's value at each collection.
        self.states: list[float | None] = []
        self.errors: list[BaseException] = []

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                collected = metrics(self._reader)
                self.states.append(
                    value(collected, "seawall.breaker.state", seawall__dependency=self._dependency)
                )
                self._stop.wait(0.001)
        except BaseException as exc:  # pragma: no cover - reported by the test
            self.errors.append(exc)

    async def sees(self, state: int, scrapes: int = 3) -> None:
        """Wait until *scrapes* collections made from now on have read *state*."""
        mark = len(self.states)
        await until(lambda: self.states[mark:].count(state) >= scrapes, within=10.0)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10.0)
        assert not self._thread.is_alive()


async def ok() -> str:
    return "ok"


async def fail() -> str:
    raise ConnectionError("connection refused")


async def test_scrapes_on_another_thread_never_make_a_transition(
    metric_reader: InMemoryMetricReader,
) -> None:
    dep = unique()
    clock = ManualClock()
    policy = seawall.Policy(
        retry=None,
        timeouts=seawall.Timeouts(attempt=None, total=None),
        breaker=seawall.CircuitBreaker(
            window_size=4, minimum_calls=4, open_duration=OPEN_FOR, half_open_calls=1
        ),
    )
    guard = seawall.guard(dep, policy, registry=seawall.Registry(clock=clock))
    breaker = guard.breaker
    assert breaker is not None
    loop_thread = threading.get_ident()
    # Listeners run inside every transition, on the thread that makes it.
    heard: list[tuple[int, Transition]] = []
    breaker.on_transition(lambda t: heard.append((threading.get_ident(), t)))

    def moves() -> list[tuple[BreakerState, BreakerState]]:
        return [(t.from_state, t.to_state) for _, t in heard]

    with Scraper(metric_reader, dep) as scraper:
        await scraper.sees(CLOSED)
        await guard.call(ok)
        for _ in range(3):  # 3 of 4 failed: it opens
            with pytest.raises(ConnectionError):
                await guard.call(fail)
        await scraper.sees(OPEN)
        with pytest.raises(seawall.CircuitOpenError):
            await guard.call(ok)

        clock.advance(OPEN_FOR)
        await scraper.sees(HALF_OPEN)  # what the scrapes read...
        assert moves() == [(BreakerState.CLOSED, BreakerState.OPEN)]  # ...changed nothing
        assert breaker._state is BreakerState.OPEN

        assert await guard.call(ok) == "ok"  # the probe makes the transition, then closes it
        await scraper.sees(CLOSED)

    assert scraper.errors == []
    assert moves() == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    assert {thread for thread, _ in heard} == {loop_thread}
    assert scraper._thread.ident != loop_thread
