"""The adaptive limit's algorithms, sample by sample, on a ManualClock.

Each test drives a :class:`Controller` by hand: a probe measures the minimum
RTT, then windows of samples move the limit. The numbers are exact: the
controller is pure arithmetic on the samples and the clock.
"""

from __future__ import annotations

import math

import pytest

from seawall import AdaptiveLimit
from seawall._adaptive import (
    MIN_SAMPLES,
    PROBE_MAX,
    PROBE_PATIENCE,
    PROBE_SAMPLES,
    Controller,
)
from seawall.testing import ManualClock

MS = 0.001


def make(
    clock: ManualClock, algorithm: str = "gradient", *, max_concurrent: int = 100, **kw: object
) -> Controller:
    kw.setdefault("tolerance", 1.5)  # round numbers below
    config = AdaptiveLimit(algorithm=algorithm, initial=20, **kw)  # type: ignore[arg-type]
    # random() = 0: probes come exactly every probe_interval.
    return Controller(config, max_concurrent=max_concurrent, now=clock.now(), random=lambda: 0.0)


def probe(c: Controller, clock: ManualClock, rtt: float = 10 * MS) -> None:
    """Start a probe and feed it PROBE_SAMPLES calls admitted after it began."""
    c.sample(clock.now(), rtt, False, 1)  # the call that ends the old era starts the probe
    clock.advance(rtt + 1e-6)
    for _ in range(PROBE_SAMPLES):
        c.sample(clock.now(), rtt, False, 1)


def window(
    c: Controller, clock: ManualClock, rtt: float, *, in_flight: int = 20, n: int = MIN_SAMPLES
) -> int:
    """*n* samples of *rtt* over one window's length (2 x min RTT); returns the limit."""
    assert c.min_rtt is not None
    for i in range(n):
        if i == n - 1:
            clock.advance(2 * c.min_rtt + 1e-6)  # (a hair more: float sums of the clock)
        limit = c.sample(clock.now(), rtt, False, in_flight)
    return limit


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(100.0)


# -- the probe -------------------------------------------------------------------------------


def test_the_first_probe_measures_quiet_calls_without_touching_the_limit(
    clock: ManualClock,
) -> None:
    c = make(clock)
    assert (c.limit, c.min_rtt) == (20, None)
    assert c.sample(clock.now(), 50 * MS, False, 1) == 20  # the probe begins
    assert c.statistics().probing
    clock.advance(10 * MS)
    for _ in range(PROBE_SAMPLES):  # calls with few in flight: quiet enough to measure
        assert c.sample(clock.now(), 10 * MS, False, 2) == 20
    assert c.min_rtt == pytest.approx(10 * MS)
    assert not c.statistics().probing


def test_a_busy_dependency_is_probed_by_holding_the_limit_low_for_a_while(
    clock: ManualClock,
) -> None:
    c = make(clock)
    c.sample(clock.now(), 30 * MS, False, 20)
    for _ in range(50):  # 20 in flight: no call is quiet, the limit is left alone
        clock.advance(10 * MS)
        assert c.sample(clock.now(), 30 * MS, False, 20) == 20
    clock.advance(PROBE_PATIENCE)
    assert c.sample(clock.now(), 30 * MS, False, 20) == 5  # a quarter of 20
    clock.advance(11 * MS)
    for _ in range(30):  # the 20 admitted before the clamp drain: they do not count
        assert c.sample(clock.now(), 40 * MS, False, 20) == 5
    assert c.min_rtt is None
    for _ in range(PROBE_SAMPLES - 1):
        assert c.sample(clock.now(), 11 * MS, False, 5) == 5
    assert c.sample(clock.now(), 11 * MS, False, 5) == 20  # measured: the limit is back
    assert c.min_rtt == pytest.approx(11 * MS)


def test_only_calls_that_ended_with_few_in_flight_count(clock: ManualClock) -> None:
    c = make(clock)
    c.sample(clock.now(), 10 * MS, False, 1)
    clock.advance(10 * MS)
    for _ in range(PROBE_SAMPLES):
        c.sample(clock.now(), 30 * MS, False, 6)  # a quarter of 20 is 5: not quiet
        c.sample(clock.now(), 10 * MS, False, 5)
    assert c.min_rtt == pytest.approx(10 * MS)


def test_the_minimum_is_a_geometric_mean_so_one_outlier_barely_moves_it(
    clock: ManualClock,
) -> None:
    c = make(clock)
    c.sample(clock.now(), 10 * MS, False, 1)
    clock.advance(0.501)
    for _ in range(PROBE_SAMPLES - 1):
        c.sample(clock.now(), 10 * MS, False, 1)
    c.sample(clock.now(), 0.5, False, 1)  # a half-second outlier among 16
    expected = math.exp((15 * math.log(0.010) + math.log(0.5)) / 16)
    assert c.min_rtt == pytest.approx(expected)
    assert c.min_rtt == pytest.approx(12.8 * MS, abs=0.1 * MS)  # the mean would be 40.6 ms


def test_the_probe_limit_respects_min_limit(clock: ManualClock) -> None:
    c = make(clock, min_limit=8)
    c.sample(clock.now(), 10 * MS, False, 20)
    clock.advance(PROBE_PATIENCE)
    assert c.sample(clock.now(), 10 * MS, False, 20) == 8


def test_a_held_probe_ends_after_probe_max_with_the_samples_it_has(clock: ManualClock) -> None:
    c = make(clock)
    c.sample(clock.now(), 10 * MS, False, 20)
    clock.advance(PROBE_PATIENCE)
    assert c.sample(clock.now(), 10 * MS, False, 20) == 5
    clock.advance(20 * MS)
    for _ in range(3):
        assert c.sample(clock.now(), 20 * MS, False, 1) == 5
    clock.advance(PROBE_MAX)
    assert c.sample(clock.now(), 20 * MS, False, 1) == 20
    assert c.min_rtt == pytest.approx(20 * MS)


def test_a_dependency_hung_from_the_start_is_held_low_until_a_call_comes_back(
    clock: ManualClock,
) -> None:
    c = make(clock)
    c.sample(clock.now(), 10 * MS, False, 1)
    limits = []
    for _ in range(12):
        clock.advance(0.25)
        limits.append(c.sample(clock.now(), 2.0, True, 20))  # timeouts measure nothing
    # Each timeout takes a tenth off; after PROBE_PATIENCE the probe holds it at 5.
    assert limits == [18, 16, 15, 13, 12, 11, 10, 5, 5, 5, 5, 5]
    assert c.min_rtt is None
    assert c.statistics().probing
    clock.advance(10 * MS)
    for _ in range(PROBE_SAMPLES):
        c.sample(clock.now(), 10 * MS, False, 5)
    assert c.min_rtt == pytest.approx(10 * MS)
    assert c.limit == 6  # 20 * 0.9 ** 12 = 5.6: no timeout went unnoticed


def test_probes_come_back_every_probe_interval_and_measure_afresh(clock: ManualClock) -> None:
    c = make(clock, probe_interval=30.0)
    probe(c, clock, 10 * MS)
    clock.advance(29.0)
    assert window(c, clock, 15 * MS) == 20  # at 1.5x the minimum: steady
    assert not c.statistics().probing
    clock.advance(1.0)
    assert c.sample(clock.now(), 15 * MS, False, 20) == 20  # the probe begins
    assert c.statistics().probing
    assert window(c, clock, 30 * MS) == 18  # windows go on while it waits for quiet calls
    clock.advance(40 * MS)
    for _ in range(PROBE_SAMPLES):
        c.sample(clock.now(), 40 * MS, False, 2)
    assert c.min_rtt == pytest.approx(40 * MS)
    assert not c.statistics().probing


def test_jitter_delays_the_next_probe_by_up_to_a_tenth(clock: ManualClock) -> None:
    config = AdaptiveLimit(initial=20, probe_interval=30.0, tolerance=1.5)
    c = Controller(config, max_concurrent=100, now=clock.now(), random=lambda: 0.5)
    probe(c, clock, 10 * MS)
    clock.advance(31.0)  # 30 s + 5 % of it is 31.5 s
    window(c, clock, 10 * MS)
    assert not c.statistics().probing
    clock.advance(0.5)
    c.sample(clock.now(), 10 * MS, False, 20)
    assert c.statistics().probing


def test_reading_statistics_changes_nothing(clock: ManualClock) -> None:
    c = make(clock)
    probe(c, clock)
    clock.advance(60.0)  # a probe is due, but only a sample starts one
    before = c.statistics()
    assert [c.statistics() for _ in range(3)] == [before] * 3
    assert not before.probing
    assert c.limit == 20
    assert before.as_dict() == {
        "algorithm": "gradient",
        "min_limit": 1,
        "max_limit": 100,
        "min_rtt": pytest.approx(10 * MS),
        "rtt": None,
        "probing": False,
    }


# -- gradient ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rtt_ms", "expected"),
    [
        # gradient = clamp(1.5 * 10 / rtt, 0.5, 1.5); limit += 0.2 * (target - limit),
        # target = limit * gradient
        # plus headroom: 4 * (gradient - 1) / (tolerance - 1)
        pytest.param(10, 23, id="at-the-minimum-grows-by-a-tenth-and-headroom"),
        pytest.param(12, 21, id="within-tolerance-grows-less"),
        pytest.param(15, 20, id="at-tolerance-holds"),
        pytest.param(20, 19, id="past-tolerance-shrinks"),
        pytest.param(30, 18, id="at-twice-tolerance-shrinks-by-a-tenth"),
        pytest.param(300, 18, id="the-gradient-floors-at-a-half"),
    ],
)
def test_gradient_one_window(clock: ManualClock, rtt_ms: float, expected: int) -> None:
    c = make(clock)
    probe(c, clock, 10 * MS)
    assert window(c, clock, rtt_ms * MS) == expected
    assert c.statistics().rtt == pytest.approx(rtt_ms * MS)


def test_gradient_grows_while_latency_stays_at_the_minimum_up_to_max_limit(
    clock: ManualClock,
) -> None:
    c = make(clock, max_limit=40, max_concurrent=40)
    probe(c, clock)
    limits = [window(c, clock, 10 * MS, in_flight=c.limit) for _ in range(8)]
    assert limits == [23, 26, 29, 33, 37, 40, 40, 40]


def test_gradient_shrinks_while_latency_stays_high_down_to_min_limit(clock: ManualClock) -> None:
    c = make(clock, min_limit=4)
    probe(c, clock)
    limits = [window(c, clock, 100 * MS) for _ in range(20)]
    assert limits[:4] == [18, 16, 15, 13]
    assert limits[-1] == 4


def test_gradient_leaves_the_limit_alone_while_app_limited(clock: ManualClock) -> None:
    c = make(clock)
    probe(c, clock)
    # Fewer than half the limit in flight: the latency says nothing of a limit
    # that binds no one, fast or slow (noise would only ratchet it down).
    assert window(c, clock, 10 * MS, in_flight=9) == 20
    assert window(c, clock, 30 * MS, in_flight=9) == 20
    assert window(c, clock, 10 * MS, in_flight=10) == 23
    # ... but a timeout still shrinks it.
    c.sample(clock.now(), 1.0, True, 1)
    assert c.limit == 21


def test_a_window_needs_min_samples_and_twice_the_minimum_rtt(clock: ManualClock) -> None:
    c = make(clock)
    probe(c, clock)
    for _ in range(50):  # many samples, no time: no window closes
        assert c.sample(clock.now(), 30 * MS, False, 20) == 20
    c2 = make(clock)
    probe(c2, clock)
    clock.advance(1.0)
    for _ in range(MIN_SAMPLES - 1):  # plenty of time, too few samples
        assert c2.sample(clock.now(), 30 * MS, False, 20) == 20
    assert c2.sample(clock.now(), 30 * MS, False, 20) == 18


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        pytest.param("gradient", 18, id="gradient-by-a-tenth"),
        pytest.param("aimd", 10, id="aimd-half"),
    ],
)
def test_a_timeout_closes_its_window_at_once_and_shrinks_the_limit(
    clock: ManualClock, algorithm: str, expected: int
) -> None:
    c = make(clock, algorithm)
    probe(c, clock)
    c.sample(clock.now(), 10 * MS, False, 20)
    assert c.sample(clock.now(), 2.0, True, 20) == expected
    # Each timeout is a window of its own: a hung dependency's limit collapses.
    for _ in range(30):
        c.sample(clock.now(), 2.0, True, 20)
    assert c.limit == 1


def test_smoothing_sets_how_far_each_window_moves(clock: ManualClock) -> None:
    c = make(clock, smoothing=1.0)
    probe(c, clock)
    assert window(c, clock, 10 * MS) == 34  # straight to limit * 1.5 + 4
    assert window(c, clock, 60 * MS) == 17  # straight to limit * 0.5


def test_tolerance_sets_the_latency_it_settles_at(clock: ManualClock) -> None:
    c = make(clock, tolerance=2.0)
    probe(c, clock)
    assert window(c, clock, 20 * MS) == 20
    assert window(c, clock, 15 * MS) == 22


# -- aimd --------------------------------------------------------------------------------


def test_aimd_adds_one_per_window_within_tolerance_and_takes_a_tenth_past_it(
    clock: ManualClock,
) -> None:
    c = make(clock, "aimd")
    probe(c, clock)
    assert [window(c, clock, 10 * MS) for _ in range(3)] == [21, 22, 23]
    assert window(c, clock, 15 * MS) == 24  # at tolerance: still within
    assert window(c, clock, 16 * MS) == 22  # 24 * 0.9 = 21.6
    assert window(c, clock, 16 * MS) == 19  # 21.6 * 0.9 = 19.44


def test_aimd_leaves_the_limit_alone_while_app_limited(clock: ManualClock) -> None:
    c = make(clock, "aimd")
    probe(c, clock)
    assert window(c, clock, 10 * MS, in_flight=5) == 20
    assert window(c, clock, 50 * MS, in_flight=5) == 20
    c.sample(clock.now(), 1.0, True, 1)
    assert c.limit == 10


def test_aimd_stays_within_its_bounds(clock: ManualClock) -> None:
    c = make(clock, "aimd", min_limit=3, max_limit=22, max_concurrent=22)
    probe(c, clock)
    assert [window(c, clock, 10 * MS) for _ in range(4)] == [21, 22, 22, 22]
    for _ in range(40):
        window(c, clock, 100 * MS)
    assert c.limit == 3


# -- recovery -------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["gradient", "aimd"])
def test_after_a_dependency_slowed_for_good_the_next_probe_lets_the_limit_recover(
    clock: ManualClock, algorithm: str
) -> None:
    c = make(clock, algorithm, probe_interval=10.0)
    probe(c, clock, 10 * MS)
    for _ in range(30):  # 10 ms became 40 ms: to the limit, this looks like queueing
        window(c, clock, 40 * MS, in_flight=c.limit)
    assert c.limit <= 2
    clock.advance(10.0)
    probe(c, clock, 40 * MS)  # measured afresh
    assert c.min_rtt == pytest.approx(40 * MS)
    for _ in range(40):
        window(c, clock, 40 * MS, in_flight=c.limit)
    assert c.limit >= 20


def test_a_minimum_measured_during_a_slow_period_is_replaced_by_the_next_probe(
    clock: ManualClock,
) -> None:
    c = make(clock, probe_interval=10.0)
    probe(c, clock, 200 * MS)  # started while the dependency was slow
    assert c.min_rtt == pytest.approx(200 * MS)
    clock.advance(10.0)
    probe(c, clock, 10 * MS)
    assert c.min_rtt == pytest.approx(10 * MS)
    assert window(c, clock, 30 * MS) == 18  # 3x the new minimum: shrinks again
