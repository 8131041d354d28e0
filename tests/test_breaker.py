"""The circuit breaker: every transition, driven by a ManualClock (no sleeps, ever)."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
import structlog

import seawall
from seawall import (
    Breaker,
    BreakerState,
    BreakerStatistics,
    CircuitBreaker,
    CircuitOpenError,
    Policy,
    Registry,
    Timeouts,
    Transition,
)
from seawall._breaker import _TimeWindow
from seawall.testing import ManualClock

CLOSED = BreakerState.CLOSED
OPEN = BreakerState.OPEN
HALF_OPEN = BreakerState.HALF_OPEN
FORCED_OPEN = BreakerState.FORCED_OPEN
DISABLED = BreakerState.DISABLED

# Small enough to trip in a few calls; every test overrides what it is about.
SMALL: dict[str, Any] = {
    "window_size": 10,
    "minimum_calls": 4,
    "open_duration": 10.0,
    "half_open_calls": 2,
    "slow_call_duration": 1.0,
}


def make(clock: ManualClock | None = None, **overrides: Any) -> tuple[Breaker, ManualClock]:
    clock = clock if clock is not None else ManualClock()
    config = CircuitBreaker(**{**SMALL, **overrides})
    return Breaker(config, clock=clock, dependency="db", endpoint="GET /rows"), clock


def call(breaker: Breaker, *, failed: bool = False, duration: float = 0.0) -> None:
    """One admitted call and its outcome."""
    breaker.record(breaker.acquire(), duration, failed)


def calls(breaker: Breaker, pattern: str) -> None:
    """Calls by letter: F failed, S succeeded, L slow success, X slow failure."""
    for c in pattern:
        call(breaker, failed=c in "FX", duration=5.0 if c in "LX" else 0.0)


def listen(breaker: Breaker) -> list[Transition]:
    seen: list[Transition] = []
    breaker.on_transition(seen.append)
    return seen


def trip(breaker: Breaker) -> None:
    """CLOSED -> OPEN by failures, whatever the window's minimum."""
    while breaker.state is CLOSED:
        call(breaker, failed=True)
    assert breaker.state is OPEN


def to_half_open(breaker: Breaker, clock: ManualClock) -> None:
    """Really HALF_OPEN: the open time is up, and a call has made the transition."""
    if breaker.state is CLOSED:
        trip(breaker)
    retry_after = breaker.retry_after
    assert retry_after is not None
    clock.advance(retry_after)
    assert breaker.state is HALF_OPEN  # reads so...
    breaker.release(breaker.acquire())  # ...and a cancelled probe makes it so
    assert breaker._state is HALF_OPEN


# -- config defaults -------------------------------------------------------------------


def test_defaults_are_resilience4js() -> None:
    cfg = CircuitBreaker()
    assert (cfg.failure_rate_threshold, cfg.slow_call_rate_threshold) == (0.5, 1.0)
    assert (cfg.window, cfg.window_size, cfg.minimum_calls) == ("count", 100, 20)
    assert (cfg.open_duration, cfg.half_open_calls) == (30.0, 5)
    assert (cfg.open_duration_multiplier, cfg.max_open_duration) == (1.0, None)
    assert CircuitBreaker(window="time").window_size == 60.0


def test_a_new_breaker_is_closed_and_empty() -> None:
    breaker, _ = make()
    stats = breaker.statistics()
    assert stats == BreakerStatistics(
        state=CLOSED,
        failure_rate=None,
        slow_call_rate=None,
        calls=0,
        failures=0,
        slow_calls=0,
        retry_after=None,
        consecutive_openings=0,
        half_open_permits_in_use=0,
    )
    assert breaker.retry_after is None
    assert breaker.would_admit()
    assert repr(breaker) == "<Breaker 'db' endpoint='GET /rows' closed>"


# -- CLOSED -> OPEN ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("threshold", "pattern", "opens"),
    [
        pytest.param(0.5, "FFSS", True, id="rate-equal-to-threshold-opens"),
        pytest.param(0.5, "FSSS", False, id="rate-under-threshold"),
        pytest.param(0.5, "SSFF", True, id="order-does-not-matter"),
        pytest.param(0.75, "FFSS", False, id="higher-threshold"),
        pytest.param(0.75, "FFFS", True, id="higher-threshold-reached"),
        pytest.param(1.0, "FFFS", False, id="all-must-fail"),
        pytest.param(1.0, "FFFF", True, id="all-failed"),
        pytest.param(0.25, "SSSF", True, id="low-threshold"),
    ],
)
def test_closed_opens_by_failure_rate(threshold: float, pattern: str, opens: bool) -> None:
    breaker, clock = make(failure_rate_threshold=threshold)
    clock.advance(7.0)
    seen = listen(breaker)
    calls(breaker, pattern)
    if not opens:
        assert breaker.state is CLOSED
        assert seen == []
        stats = breaker.statistics()
        assert stats.failure_rate == pattern.count("F") / len(pattern)
        return
    assert breaker.state is OPEN
    assert seen == [
        Transition(
            dependency="db",
            endpoint="GET /rows",
            from_state=CLOSED,
            to_state=OPEN,
            reason="failure_rate",
            at=7.0,
            open_for=10.0,
        )
    ]
    stats = breaker.statistics()
    assert stats.consecutive_openings == 1
    assert stats.failure_rate == pattern.count("F") / len(pattern)


@pytest.mark.parametrize(
    ("threshold", "pattern", "opens"),
    [
        pytest.param(1.0, "LLLS", False, id="default-needs-all-slow"),
        pytest.param(1.0, "LLLL", True, id="default-all-slow"),
        pytest.param(0.5, "LLSS", True, id="half-slow"),
        pytest.param(0.5, "LSSS", False, id="quarter-slow"),
        pytest.param(0.5, "XSSL", True, id="slow-failures-count-as-slow"),
    ],
)
def test_closed_opens_by_slow_call_rate(threshold: float, pattern: str, opens: bool) -> None:
    # failure_rate_threshold 1.0: the slow failure in "XSSL" cannot open by failure rate.
    breaker, _ = make(slow_call_rate_threshold=threshold, failure_rate_threshold=1.0)
    seen = listen(breaker)
    calls(breaker, pattern)
    assert (breaker.state is OPEN) is opens
    slow = sum(c in "LX" for c in pattern)
    if opens:
        assert [(t.to_state, t.reason) for t in seen] == [(OPEN, "slow_call_rate")]
    else:
        assert breaker.statistics().slow_call_rate == slow / len(pattern)


@pytest.mark.parametrize(
    ("duration", "slow"),
    [
        pytest.param(0.0, False, id="instant"),
        pytest.param(0.999, False, id="just-under"),
        pytest.param(1.0, True, id="at-slow_call_duration"),
        pytest.param(30.0, True, id="way-over"),
    ],
)
def test_slow_is_measured_against_slow_call_duration(duration: float, slow: bool) -> None:
    breaker, _ = make(slow_call_duration=1.0)
    call(breaker, duration=duration)
    assert breaker.statistics().slow_calls == int(slow)


def test_failure_rate_wins_when_both_rates_are_reached() -> None:
    breaker, _ = make(slow_call_rate_threshold=0.5)
    seen = listen(breaker)
    calls(breaker, "XXSS")
    assert [t.reason for t in seen] == ["failure_rate"]


def test_nothing_opens_before_minimum_calls() -> None:
    breaker, _ = make(minimum_calls=4)
    calls(breaker, "FFF")
    stats = breaker.statistics()
    assert stats.state is CLOSED
    assert (stats.calls, stats.failures) == (3, 3)
    assert stats.failure_rate is None
    assert stats.slow_call_rate is None
    call(breaker)  # the fourth call: 3/4 failed
    assert breaker.state is OPEN
    assert breaker.statistics().failure_rate == 0.75


def test_count_window_evicts_the_oldest_calls() -> None:
    breaker, _ = make(window_size=4, minimum_calls=4, failure_rate_threshold=0.75)
    calls(breaker, "FFSS")
    assert breaker.statistics().failures == 2
    calls(breaker, "SS")  # both failures fall out of the window
    stats = breaker.statistics()
    assert (stats.calls, stats.failures, stats.failure_rate) == (4, 0, 0.0)
    calls(breaker, "FF")
    assert breaker.state is CLOSED  # 2/4; counting everything it would also be 4/8
    call(breaker, failed=True)  # S F F F: 3/4 (everything: 5/9)
    assert breaker.state is OPEN


def test_count_window_evicts_slow_calls_too() -> None:
    breaker, _ = make(window_size=4, minimum_calls=4)
    calls(breaker, "LXLS")
    stats = breaker.statistics()
    assert (stats.slow_calls, stats.failures) == (3, 1)
    calls(breaker, "SSS")
    stats = breaker.statistics()
    assert (stats.calls, stats.slow_calls, stats.failures) == (4, 0, 0)


def test_time_window_evicts_buckets_as_the_clock_advances() -> None:
    # 20 s in 20 buckets of 1 s: at time t the window holds buckets floor(t)-19 .. floor(t).
    breaker, clock = make(window="time", window_size=20.0, minimum_calls=100)

    def at(t: float) -> tuple[int, int, int]:
        clock.advance(t - clock.now())
        stats = breaker.statistics()
        return stats.calls, stats.failures, stats.slow_calls

    at(0.0)
    calls(breaker, "FF")  # bucket 0
    at(5.5)
    calls(breaker, "L")  # bucket 5
    at(10.0)
    calls(breaker, "X")  # bucket 10
    assert at(19.99) == (4, 3, 2)
    assert at(20.0) == (2, 1, 2)  # bucket 0 is out
    assert at(24.99) == (2, 1, 2)
    assert at(25.0) == (1, 1, 1)  # bucket 5 is out
    calls(breaker, "S")  # bucket 25
    assert at(29.99) == (2, 1, 1)
    assert at(30.0) == (1, 0, 0)  # bucket 10 is out
    assert at(44.99) == (1, 0, 0)
    assert at(45.0) == (0, 0, 0)
    calls(breaker, "F")
    assert at(10_000.0) == (0, 0, 0)  # a jump past the whole window empties it
    calls(breaker, "FS")
    assert at(10_000.5) == (2, 1, 0)


def test_time_window_opens_on_recent_calls_only() -> None:
    breaker, clock = make(window="time", window_size=20.0, minimum_calls=3)
    calls(breaker, "FF")
    clock.advance(20.0)
    calls(breaker, "SSF")  # 1/3 in the window; everything ever would be 3/5
    assert breaker.state is CLOSED
    call(breaker, failed=True)  # 2/4
    assert breaker.state is OPEN


# -- OPEN ----------------------------------------------------------------------------


def test_open_rejects_with_a_shrinking_retry_after() -> None:
    breaker, clock = make(open_duration=10.0)
    trip(breaker)
    for elapsed, left in [(0.0, 10.0), (3.0, 7.0), (9.5, 0.5)]:
        clock.advance(elapsed - clock.now())
        assert breaker.retry_after == left
        assert breaker.statistics().retry_after == left
        assert not breaker.would_admit()
        with pytest.raises(CircuitOpenError) as caught:
            breaker.acquire()
        assert caught.value.retry_after == left
        assert caught.value.dependency == "db"
        assert caught.value.reason == "circuit_open"
        assert "open" in str(caught.value)
    assert breaker.state is OPEN


def test_rejections_are_fresh_errors() -> None:
    breaker, _ = make()
    trip(breaker)
    errors = []
    for _ in range(2):
        with pytest.raises(CircuitOpenError) as caught:
            breaker.acquire()
        errors.append(caught.value)
    assert errors[0] is not errors[1]


def read_everything(
    breaker: Breaker,
) -> tuple[BreakerState, float | None, BreakerStatistics, bool, str]:
    """Every reader of the breaker, as a gauge, a snapshot or a log line would use them."""
    return (
        breaker.state,
        breaker.retry_after,
        breaker.statistics(),
        breaker.would_admit(),
        repr(breaker),
    )


def test_reading_an_elapsed_open_breaker_reads_half_open_and_changes_nothing() -> None:
    breaker, clock = make(open_duration=10.0, half_open_calls=2)
    calls(breaker, "SFFF")
    seen = listen(breaker)
    clock.advance(9.999)
    assert breaker.state is OPEN
    clock.advance(0.001)
    for _ in range(3):  # a scrape every few seconds, say
        state, retry_after, stats, admits, text = read_everything(breaker)
        assert state is HALF_OPEN
        assert retry_after is None
        assert (stats.state, stats.calls, stats.failures, stats.retry_after) == (
            HALF_OPEN,
            0,
            0,
            None,
        )
        assert (stats.half_open_permits_in_use, stats.consecutive_openings) == (0, 1)
        assert admits
        assert "half_open" in text
    assert seen == []  # no listener ran...
    assert breaker._state is OPEN  # ...and no transition was recorded


def test_the_next_acquire_performs_the_half_open_transition() -> None:
    breaker, clock = make(open_duration=10.0, half_open_calls=2)
    trip(breaker)
    seen = listen(breaker)
    during: list[BreakerState] = []
    breaker.on_transition(lambda t: during.append(breaker._state))
    clock.advance(10.0)
    read_everything(breaker)
    assert seen == []
    breaker.acquire()
    assert seen == [
        Transition(
            dependency="db",
            endpoint="GET /rows",
            from_state=OPEN,
            to_state=HALF_OPEN,
            reason="open_duration_elapsed",
            at=10.0,
            open_for=None,
        )
    ]
    assert during == [HALF_OPEN]
    assert breaker._state is HALF_OPEN
    assert breaker.statistics().half_open_permits_in_use == 1
    assert breaker.retry_after is None


@pytest.mark.parametrize("how", ["record", "release"])
def test_a_stale_outcome_does_not_perform_the_half_open_transition(how: str) -> None:
    breaker, clock = make(open_duration=10.0)
    permit = breaker.acquire()  # admitted while CLOSED
    trip(breaker)
    seen = listen(breaker)
    clock.advance(10.0)
    if how == "record":
        breaker.record(permit, 0.0, False)
    else:
        breaker.release(permit)
    assert seen == []
    assert breaker._state is OPEN
    assert breaker.state is HALF_OPEN


@pytest.mark.parametrize(
    ("method", "to", "reason"),
    [
        pytest.param("force_open", FORCED_OPEN, "forced_open", id="force_open"),
        pytest.param("force_closed", CLOSED, "forced_closed", id="force_closed"),
        pytest.param("disable", DISABLED, "disabled", id="disable"),
        pytest.param("reset", CLOSED, "reset", id="reset"),
    ],
)
def test_a_manual_change_of_an_elapsed_open_breaker_leaves_half_open(
    method: str, to: BreakerState, reason: str
) -> None:
    """Listeners hear the change from the state ``state`` reported, pending transition first."""
    breaker, clock = make(open_duration=10.0)
    trip(breaker)
    seen = listen(breaker)
    clock.advance(10.0)
    assert breaker.state is HALF_OPEN
    getattr(breaker, method)()
    assert [(t.from_state, t.to_state, t.reason) for t in seen] == [
        (OPEN, HALF_OPEN, "open_duration_elapsed"),
        (HALF_OPEN, to, reason),
    ]


def test_an_open_breaker_whose_time_is_not_up_changes_by_hand_in_one_step() -> None:
    breaker, clock = make(open_duration=10.0)
    trip(breaker)
    seen = listen(breaker)
    clock.advance(9.0)
    breaker.force_open()
    assert [(t.from_state, t.to_state) for t in seen] == [(OPEN, FORCED_OPEN)]


def test_reading_a_time_window_does_not_roll_it() -> None:
    breaker, clock = make(
        window="time", window_size=10.0, minimum_calls=2, failure_rate_threshold=0.75
    )
    calls(breaker, "SF")
    window = breaker._window
    assert isinstance(window, _TimeWindow)
    before = (window._epoch, list(window._calls), window.calls)
    clock.advance(5.0)
    stats = breaker.statistics()
    assert (stats.calls, stats.failures) == (2, 1)
    clock.advance(5.0)  # both calls have left the window
    stats = breaker.statistics()
    assert (stats.calls, stats.failures, stats.failure_rate) == (0, 0, None)
    assert (window._epoch, list(window._calls), window.calls) == before
    call(breaker)  # the next call rolls it
    assert breaker.statistics().calls == window.calls == 1


# -- HALF_OPEN -----------------------------------------------------------------------


@pytest.mark.parametrize("probes", [1, 2, 5])
def test_half_open_admits_exactly_half_open_calls_probes(probes: int) -> None:
    breaker, clock = make(half_open_calls=probes)
    to_half_open(breaker, clock)
    for n in range(1, probes + 1):
        assert breaker.would_admit()
        breaker.acquire()
        assert breaker.statistics().half_open_permits_in_use == n
    for _ in range(3):
        assert not breaker.would_admit()
        with pytest.raises(CircuitOpenError) as caught:
            breaker.acquire()
        assert caught.value.retry_after is None  # not OPEN: no time is known
    assert breaker.state is HALF_OPEN
    assert breaker.statistics().half_open_permits_in_use == probes


def test_probes_that_pass_close_the_breaker_with_an_empty_window() -> None:
    breaker, clock = make(half_open_calls=3)
    calls(breaker, "SSSSSS")
    trip(breaker)
    to_half_open(breaker, clock)
    seen = listen(breaker)
    permits = [breaker.acquire() for _ in range(3)]
    for i, permit in enumerate(permits):
        breaker.record(permit, 0.0, False)
        stats = breaker.statistics()
        if i < 2:
            assert stats.state is HALF_OPEN
            assert (stats.calls, stats.failure_rate) == (i + 1, 0.0)
            assert stats.half_open_permits_in_use == 2 - i  # the ones still out
    assert [(t.from_state, t.to_state, t.reason) for t in seen] == [
        (HALF_OPEN, CLOSED, "probes_passed")
    ]
    stats = breaker.statistics()
    assert stats.state is CLOSED
    assert (stats.calls, stats.failures, stats.slow_calls) == (0, 0, 0)
    assert stats.failure_rate is None
    assert stats.consecutive_openings == 0
    # The old failures are gone: it takes a whole new minimum to open again.
    calls(breaker, "FFF")
    assert breaker.state is CLOSED


@pytest.mark.parametrize(
    ("overrides", "pattern", "outcome"),
    [
        pytest.param({}, "SSSS", CLOSED, id="all-pass"),
        pytest.param({}, "FSSS", CLOSED, id="one-of-four-failed"),
        pytest.param({}, "SFSF", OPEN, id="half-failed"),
        pytest.param({}, "FFFF", OPEN, id="all-failed"),
        pytest.param({}, "LLLL", OPEN, id="all-slow-default-threshold"),
        pytest.param({}, "LLLS", CLOSED, id="some-slow-default-threshold"),
        pytest.param({"slow_call_rate_threshold": 0.5}, "LLSS", OPEN, id="half-slow"),
        pytest.param({"failure_rate_threshold": 0.75}, "FFSS", CLOSED, id="high-threshold"),
    ],
)
def test_probes_decide_once_all_of_them_are_in(
    overrides: dict[str, Any], pattern: str, outcome: BreakerState
) -> None:
    breaker, clock = make(half_open_calls=4, **overrides)
    to_half_open(breaker, clock)
    seen = listen(breaker)
    permits = [breaker.acquire() for _ in pattern]
    for i, (permit, c) in enumerate(zip(permits, pattern, strict=True)):
        assert breaker.state is HALF_OPEN, f"decided after {i} of 4 probes"
        breaker.record(permit, 5.0 if c in "LX" else 0.0, c in "FX")
    assert breaker.state is outcome
    reason = "probes_passed" if outcome is CLOSED else "probes_failed"
    assert [(t.from_state, t.to_state, t.reason) for t in seen] == [(HALF_OPEN, outcome, reason)]


def test_failing_probes_reopen_for_a_growing_time_up_to_the_cap() -> None:
    breaker, clock = make(
        half_open_calls=1, open_duration=10.0, open_duration_multiplier=2.0, max_open_duration=35.0
    )
    seen = listen(breaker)
    trip(breaker)
    expected = [10.0, 20.0, 35.0, 35.0, 35.0]
    for n, open_for in enumerate(expected, start=1):
        stats = breaker.statistics()
        assert stats.state is OPEN
        assert stats.consecutive_openings == n
        assert stats.retry_after == open_for
        assert seen[-1].open_for == open_for
        assert seen[-1].reason == ("failure_rate" if n == 1 else "probes_failed")
        clock.advance(open_for - 0.5)
        assert breaker.state is OPEN  # not a moment early
        clock.advance(0.5)
        breaker.record(breaker.acquire(), 0.0, True)
    # A passing probe ends the run of openings: the next one is short again.
    clock.advance(35.0)
    breaker.record(breaker.acquire(), 0.0, False)
    assert breaker.statistics().consecutive_openings == 0
    trip(breaker)
    assert breaker.retry_after == 10.0
    assert breaker.statistics().consecutive_openings == 1


def test_open_time_without_a_cap_keeps_growing() -> None:
    breaker, clock = make(half_open_calls=1, open_duration=1.0, open_duration_multiplier=3.0)
    trip(breaker)
    for open_for in [1.0, 3.0, 9.0, 27.0]:
        assert breaker.retry_after == open_for
        clock.advance(open_for)
        breaker.record(breaker.acquire(), 0.0, True)
    assert breaker.retry_after == 81.0


@pytest.mark.parametrize("multiplier", [2.0, 2, 1.5])
def test_a_thousand_openings_in_a_row_do_not_overflow(multiplier: float) -> None:
    # A float power overflows past ~1e308: 2.0 ** 1024 raised OverflowError out of
    # record() and left the breaker HALF_OPEN with its probe used up, for good.
    breaker, clock = make(
        half_open_calls=1,
        open_duration=1.0,
        open_duration_multiplier=multiplier,
        max_open_duration=60.0,
    )
    trip(breaker)
    for _ in range(2000):
        clock.advance(60.0)
        breaker.record(breaker.acquire(), 0.0, True)
    stats = breaker.statistics()
    assert (stats.state, stats.retry_after, stats.consecutive_openings) == (OPEN, 60.0, 2001)
    clock.advance(60.0)
    breaker.record(breaker.acquire(), 0.0, False)
    assert breaker.state is CLOSED


# -- manual control ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "reason", "consecutive", "next_open_for"),
    [
        pytest.param("reset", "reset", 0, 10.0, id="reset-forgets"),
        pytest.param("force_closed", "forced_closed", 2, 40.0, id="force_closed-remembers"),
    ],
)
def test_reset_forgets_consecutive_openings_and_force_closed_does_not(
    method: str, reason: str, consecutive: int, next_open_for: float
) -> None:
    breaker, clock = make(half_open_calls=1, open_duration=10.0, open_duration_multiplier=2.0)
    trip(breaker)
    to_half_open(breaker, clock)
    breaker.record(breaker.acquire(), 0.0, True)
    assert breaker.statistics().consecutive_openings == 2
    seen = listen(breaker)
    getattr(breaker, method)()
    assert [(t.from_state, t.to_state, t.reason) for t in seen] == [(OPEN, CLOSED, reason)]
    stats = breaker.statistics()
    assert (stats.state, stats.calls, stats.consecutive_openings) == (CLOSED, 0, consecutive)
    trip(breaker)
    assert breaker.retry_after == next_open_for


@pytest.mark.parametrize("start", [CLOSED, OPEN, HALF_OPEN, DISABLED])
def test_force_open_rejects_everything_for_good(start: BreakerState) -> None:
    breaker, clock = make()
    calls(breaker, "SFS")
    if start is not CLOSED:
        if start is DISABLED:
            breaker.disable()
        else:
            trip(breaker)
        if start is HALF_OPEN:
            to_half_open(breaker, clock)
    assert breaker.state is start
    seen = listen(breaker)
    breaker.force_open()
    assert [(t.from_state, t.to_state, t.reason) for t in seen] == [
        (start, FORCED_OPEN, "forced_open")
    ]
    clock.advance(1e6)  # no open duration ends a forced opening
    assert breaker.state is FORCED_OPEN
    assert breaker.retry_after is None
    assert not breaker.would_admit()
    with pytest.raises(CircuitOpenError) as caught:
        breaker.acquire()
    assert caught.value.retry_after is None
    assert "forced_open" in str(caught.value)
    stats = breaker.statistics()
    assert (stats.calls, stats.failure_rate, stats.retry_after) == (0, None, None)


@pytest.mark.parametrize("start", [OPEN, HALF_OPEN, FORCED_OPEN, DISABLED, CLOSED])
def test_force_closed_gives_closed_with_an_empty_window(start: BreakerState) -> None:
    breaker, clock = make()
    calls(breaker, "SFS")
    if start is OPEN or start is HALF_OPEN:
        trip(breaker)
        if start is HALF_OPEN:
            to_half_open(breaker, clock)
            breaker.acquire()
    elif start is FORCED_OPEN:
        breaker.force_open()
    elif start is DISABLED:
        breaker.disable()
    assert breaker.state is start
    breaker.force_closed()
    stats = breaker.statistics()
    assert (stats.state, stats.calls, stats.failures, stats.half_open_permits_in_use) == (
        CLOSED,
        0,
        0,
        0,
    )
    assert breaker.would_admit()
    calls(breaker, "FFF")  # a whole new minimum_calls is needed
    assert breaker.state is CLOSED
    call(breaker, failed=True)
    assert breaker.state is OPEN


def test_disable_admits_everything_and_records_nothing() -> None:
    breaker, clock = make()
    trip(breaker)
    seen = listen(breaker)
    breaker.disable()
    assert [(t.from_state, t.to_state, t.reason) for t in seen] == [(OPEN, DISABLED, "disabled")]
    for _ in range(100):
        call(breaker, failed=True, duration=100.0)
    clock.advance(1e6)
    stats = breaker.statistics()
    assert (stats.state, stats.calls, stats.failures, stats.slow_calls) == (DISABLED, 0, 0, 0)
    assert stats.retry_after is None
    assert breaker.would_admit()
    breaker.reset()
    assert breaker.state is CLOSED
    calls(breaker, "FFFF")
    assert breaker.state is OPEN


# -- listeners -------------------------------------------------------------------------


def test_listeners_see_a_whole_cycle() -> None:
    breaker, clock = make(half_open_calls=1)
    seen = listen(breaker)
    calls(breaker, "FFFF")
    clock.advance(10.0)
    breaker.record(breaker.acquire(), 0.0, False)
    breaker.force_open()
    breaker.disable()
    breaker.force_closed()
    breaker.reset()
    assert [(t.from_state, t.to_state, t.reason, t.at, t.open_for) for t in seen] == [
        (CLOSED, OPEN, "failure_rate", 0.0, 10.0),
        (OPEN, HALF_OPEN, "open_duration_elapsed", 10.0, None),
        (HALF_OPEN, CLOSED, "probes_passed", 10.0, None),
        (CLOSED, FORCED_OPEN, "forced_open", 10.0, None),
        (FORCED_OPEN, DISABLED, "disabled", 10.0, None),
        (DISABLED, CLOSED, "forced_closed", 10.0, None),
        (CLOSED, CLOSED, "reset", 10.0, None),
    ]
    assert all((t.dependency, t.endpoint) == ("db", "GET /rows") for t in seen)
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen[0].reason = "other"  # type: ignore[misc]


def test_the_remover_removes_only_its_listener() -> None:
    breaker, _ = make()
    first: list[Transition] = []
    second: list[Transition] = []
    remove_first = breaker.on_transition(first.append)
    breaker.on_transition(second.append)
    breaker.force_open()
    remove_first()
    remove_first()  # twice is harmless
    breaker.force_closed()
    assert [t.to_state for t in first] == [FORCED_OPEN]
    assert [t.to_state for t in second] == [FORCED_OPEN, CLOSED]


def test_a_raising_listener_does_not_break_the_breaker() -> None:
    breaker, _ = make()
    after: list[Transition] = []

    def boom(event: Transition) -> None:
        raise RuntimeError("listener bug")

    breaker.on_transition(boom)
    breaker.on_transition(after.append)
    with structlog.testing.capture_logs() as logs:
        calls(breaker, "FFFF")  # the opening happens inside record()
    assert breaker.state is OPEN
    assert [t.to_state for t in after] == [OPEN]  # later listeners still hear it
    assert [e["event"] for e in logs] == ["seawall.breaker.listener_failed"]
    assert logs[0]["log_level"] == "error"
    with pytest.raises(CircuitOpenError):
        breaker.acquire()


def test_a_listener_may_read_the_breaker() -> None:
    breaker, _ = make()
    states: list[BreakerState] = []
    breaker.on_transition(lambda t: states.append(breaker.statistics().state))
    calls(breaker, "FFFF")
    assert states == [OPEN]


# -- stale outcomes --------------------------------------------------------------------


def test_an_outcome_from_before_an_opening_is_dropped() -> None:
    breaker, clock = make(half_open_calls=1)
    slow_permit = breaker.acquire()  # a call begun while CLOSED...
    calls(breaker, "FFFF")  # ...that the breaker opens under
    before = breaker.statistics()
    breaker.record(slow_permit, 50.0, True)
    assert breaker.statistics() == before
    clock.advance(10.0)
    assert breaker.state is HALF_OPEN
    breaker.record(slow_permit, 50.0, False)  # must not count as the probe
    stats = breaker.statistics()
    assert (stats.state, stats.calls) == (HALF_OPEN, 0)
    breaker.release(slow_permit)  # nor give back a probe it never held
    probe = breaker.acquire()
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    breaker.record(probe, 0.0, False)
    assert breaker.state is CLOSED


def test_a_probe_outcome_after_the_probes_decided_is_dropped() -> None:
    breaker, clock = make(half_open_calls=2)
    to_half_open(breaker, clock)
    first, second = breaker.acquire(), breaker.acquire()
    breaker.force_closed()
    breaker.record(first, 0.0, True)
    breaker.release(second)
    stats = breaker.statistics()
    assert (stats.state, stats.calls, stats.failures) == (CLOSED, 0, 0)


@pytest.mark.parametrize("change", ["force_closed", "reset", "disable", "force_open"])
def test_an_outcome_from_before_a_manual_change_is_dropped(change: str) -> None:
    breaker, _ = make(minimum_calls=1, window_size=1)
    permit = breaker.acquire()
    getattr(breaker, change)()
    state = breaker.state
    breaker.record(permit, 0.0, True)
    stats = breaker.statistics()
    assert (stats.state, stats.calls) == (state, 0)


# -- cancellation ------------------------------------------------------------------


def test_a_released_probe_permit_goes_back() -> None:
    breaker, clock = make(half_open_calls=1)
    to_half_open(breaker, clock)
    probe = breaker.acquire()
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    breaker.release(probe)  # cancelled: counts as nothing
    stats = breaker.statistics()
    assert (stats.state, stats.calls, stats.half_open_permits_in_use) == (HALF_OPEN, 0, 0)
    probe = breaker.acquire()
    breaker.record(probe, 0.0, False)
    assert breaker.state is CLOSED


def test_a_released_call_counts_as_nothing_while_closed() -> None:
    breaker, _ = make(minimum_calls=1, window_size=1)
    for _ in range(10):
        breaker.release(breaker.acquire())
    stats = breaker.statistics()
    assert (stats.state, stats.calls) == (CLOSED, 0)


# -- bounded memory ------------------------------------------------------------------


def test_count_window_storage_stays_the_size_of_the_window() -> None:
    breaker, _ = make(window_size=100, minimum_calls=100, slow_call_rate_threshold=1.0)
    window = breaker._window
    storage = window._codes  # type: ignore[union-attr]
    assert len(storage) == 100
    permit = breaker.acquire()
    for i in range(1_000_000):
        breaker.record(permit, 0.0, i % 10 == 0)  # 10 % failures: stays CLOSED
    assert breaker.state is CLOSED
    assert len(window._codes) == 100  # type: ignore[union-attr]
    stats = breaker.statistics()
    assert (stats.calls, stats.failures) == (100, 10)


def test_time_window_storage_stays_twenty_buckets() -> None:
    breaker, clock = make(window="time", window_size=60.0, minimum_calls=1000)
    window = breaker._window
    permit = breaker.acquire()
    for _ in range(100_000):
        breaker.record(permit, 0.0, False)
        clock.advance(0.01)
    assert breaker.state is CLOSED
    assert [len(window._calls), len(window._failures), len(window._slow)] == [20, 20, 20]  # type: ignore[union-attr]
    # 1000 s of 100 calls a second: the window holds the newest 20 buckets of 3 s.
    assert 5700 <= breaker.statistics().calls <= 6000


# -- statistics ----------------------------------------------------------------------


def test_statistics_are_a_frozen_snapshot() -> None:
    breaker, _ = make()
    calls(breaker, "FSLS")
    stats = breaker.statistics()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.calls = 0  # type: ignore[misc]
    call(breaker)
    assert stats.calls == 4  # the snapshot did not move
    assert stats.as_dict() == {
        "state": "closed",
        "failure_rate": 0.25,
        "slow_call_rate": 0.25,
        "calls": 4,
        "failures": 1,
        "slow_calls": 1,
        "retry_after": None,
        "consecutive_openings": 0,
    }


# -- through seawall.guard ---------------------------------------------------------------


def guarded(
    clock: ManualClock, timeouts: Timeouts | None = None, **overrides: Any
) -> seawall.Guard:
    policy = Policy(
        retry=None,
        timeouts=timeouts or Timeouts(attempt=None, total=None),
        breaker=CircuitBreaker(**{**SMALL, "half_open_calls": 1, **overrides}),
    )
    return seawall.guard("db", policy, registry=Registry(clock=clock))


async def ok() -> str:
    return "ok"


async def fail(exc: Exception) -> None:
    raise exc


async def run(g: seawall.Guard, style: str, fn: Callable[[], Awaitable[object]]) -> object:
    if style == "call":
        return await g.call(fn)
    async with g:
        result = await fn()
    return result


TIMEOUTS = [
    pytest.param(None, id="no-timeouts"),
    pytest.param(Timeouts(attempt=30.0, total=60.0), id="with-timeouts"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("style", ["call", "async_with"])
@pytest.mark.parametrize("timeouts", TIMEOUTS)
async def test_a_probe_cancelled_mid_flight_returns_its_permit(
    style: str, timeouts: Timeouts | None
) -> None:
    clock = ManualClock()
    g = guarded(clock, timeouts)
    breaker = g.breaker
    assert breaker is not None
    for _ in range(4):
        with pytest.raises(ConnectionError):
            await run(g, style, lambda: fail(ConnectionError("down")))
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpenError) as caught:
        await run(g, style, ok)
    assert caught.value.retry_after == 10.0
    clock.advance(10.0)

    started = anyio.Event()

    async def hang() -> None:
        started.set()
        await anyio.Event().wait()  # never set: only the cancellation ends it

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, g, style, hang)
        await started.wait()
        assert breaker.statistics().half_open_permits_in_use == 1
        with pytest.raises(CircuitOpenError):
            await run(g, style, ok)  # the one probe is out
        tg.cancel_scope.cancel()
    assert tg.cancel_scope.cancel_called

    stats = breaker.statistics()
    assert (stats.state, stats.calls, stats.failures) == (HALF_OPEN, 0, 0)
    assert stats.half_open_permits_in_use == 0
    # The permit came back: a new probe is admitted, and it decides.
    with pytest.raises(ConnectionError):
        await run(g, style, lambda: fail(ConnectionError("still down")))
    stats = breaker.statistics()
    assert (stats.state, stats.consecutive_openings) == (OPEN, 2)


@pytest.mark.anyio
@pytest.mark.parametrize("style", ["call", "async_with"])
@pytest.mark.parametrize("timeouts", TIMEOUTS)
async def test_a_call_cancelled_mid_flight_counts_as_nothing(
    style: str, timeouts: Timeouts | None
) -> None:
    clock = ManualClock()
    g = guarded(clock, timeouts, minimum_calls=2, window_size=2)
    breaker = g.breaker
    assert breaker is not None
    with pytest.raises(ConnectionError):
        await run(g, style, lambda: fail(ConnectionError("down")))
    for _ in range(3):
        with anyio.CancelScope() as scope:

            async def cancelled_mid_flight() -> None:
                clock.advance(100.0)  # it would be a slow call, had it finished
                scope.cancel()
                await anyio.Event().wait()

            await run(g, style, cancelled_mid_flight)
        assert scope.cancelled_caught
    stats = breaker.statistics()
    assert (stats.state, stats.calls, stats.failures, stats.slow_calls) == (CLOSED, 1, 1, 0)


@pytest.mark.anyio
@pytest.mark.parametrize("style", ["call", "async_with"])
async def test_record_on_and_ignore_on_through_the_guard(style: str) -> None:
    clock = ManualClock()
    g = guarded(
        clock,
        minimum_calls=2,
        record_on=(ConnectionError, ValueError),
        ignore_on=lambda exc: isinstance(exc, ConnectionResetError) or "ignore" in str(exc),
    )
    breaker = g.breaker
    assert breaker is not None
    ignored: list[Exception] = [ConnectionResetError("reset"), ValueError("please ignore")]
    for exc in ignored * 5:
        with pytest.raises(type(exc)):
            await run(g, style, lambda exc=exc: fail(exc))  # type: ignore[misc]
    stats = breaker.statistics()
    assert (stats.state, stats.calls, stats.failures) == (CLOSED, 0, 0)
    with pytest.raises(ConnectionRefusedError):
        await run(g, style, lambda: fail(ConnectionRefusedError("refused")))
    assert breaker.statistics().failures == 1
    with pytest.raises(ValueError, match="bad"):
        await run(g, style, lambda: fail(ValueError("bad")))
    assert breaker.state is OPEN


@pytest.mark.anyio
@pytest.mark.parametrize("style", ["call", "async_with"])
async def test_an_ignored_error_returns_the_probe_permit(style: str) -> None:
    clock = ManualClock()
    g = guarded(clock, ignore_on=(KeyError,))
    breaker = g.breaker
    assert breaker is not None
    to_half_open(breaker, clock)
    with pytest.raises(KeyError):
        await run(g, style, lambda: fail(KeyError("k")))
    stats = breaker.statistics()
    assert (stats.state, stats.calls, stats.half_open_permits_in_use) == (HALF_OPEN, 0, 0)
    with pytest.raises(OSError, match="still down"):
        await run(g, style, lambda: fail(OSError("still down")))
    assert breaker.state is OPEN
    assert breaker.statistics().consecutive_openings == 2


@pytest.mark.anyio
@pytest.mark.parametrize("style", ["call", "async_with"])
@pytest.mark.parametrize("timeouts", TIMEOUTS)
async def test_a_probe_that_succeeds_through_the_guard_closes_the_breaker(
    style: str, timeouts: Timeouts | None
) -> None:
    # On trio, CancelScope.__exit__ returns True when no exception passed through:
    # a guard that took that for "the attempt timeout cut the block" failed here.
    clock = ManualClock()
    g = guarded(clock, timeouts, half_open_calls=2)
    breaker = g.breaker
    assert breaker is not None
    to_half_open(breaker, clock)
    assert await run(g, style, ok) == "ok"
    stats = breaker.statistics()
    assert (stats.state, stats.calls, stats.failures) == (HALF_OPEN, 1, 0)
    assert await run(g, style, ok) == "ok"
    stats = breaker.statistics()
    assert (stats.state, stats.calls, stats.consecutive_openings) == (CLOSED, 0, 0)
