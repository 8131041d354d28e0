"""Both algorithms against a simulated server (see adaptive_sim): minutes of traffic, no sockets.

The server has 8 workers and a 10 ms service time (800 calls a second);
calls arrive at 1,200 a second, and those over the limit are refused. The
loopback test (test_loopback.py) checks the same on real sockets, with the
noise of a shared machine; here every run is exact and repeatable.
"""

from __future__ import annotations

import pytest
from adaptive_sim import simulate

from seawall import AdaptiveLimit

ALGORITHMS = [pytest.param("gradient", id="gradient"), pytest.param("aimd", id="aimd")]
HEALTHY = (0.0, 8, 0.010)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_limit_settles_near_the_servers_capacity(algorithm: str) -> None:
    run = simulate(AdaptiveLimit(algorithm=algorithm), schedule=[HEALTHY], duration=10.0)
    assert 8 <= run.median_in_flight(2, 10) <= 16
    assert run.median_latency(2, 10) < 0.020  # 10 ms of service, a few of queueing
    assert run.goodput(2, 10) >= 0.97 * 800


def test_a_static_bulkhead_of_100_queues_in_the_same_model() -> None:
    # max_limit = min_limit = 100: a static bulkhead of 100, through the same model.
    run = simulate(
        AdaptiveLimit(min_limit=100, max_limit=100, initial=100), schedule=[HEALTHY], duration=10.0
    )
    assert run.median_in_flight(2, 10) == 100
    assert run.median_latency(2, 10) > 0.100  # 100 calls for 8 workers: 125 ms
    assert run.goodput(2, 10) >= 0.97 * 800


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_limit_follows_the_capacity_down_and_up(algorithm: str) -> None:
    run = simulate(
        AdaptiveLimit(algorithm=algorithm),
        schedule=[HEALTHY, (10.0, 4, 0.010), (20.0, 8, 0.010)],
        duration=30.0,
    )
    before = run.median_limit(5, 10)
    assert 8 <= before <= 16
    halved = run.median_limit(11, 20)  # within a second of the drop
    assert 4 <= halved <= before / 2 + 1
    assert run.median_latency(11, 20) < 0.020
    assert run.goodput(11, 20) >= 0.97 * 400
    assert 8 <= run.median_limit(21, 30) <= 16  # and back up


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_limit_recovers_after_a_slow_period(algorithm: str) -> None:
    # The service time goes from 10 ms to 100 ms for five seconds, then back.
    run = simulate(
        AdaptiveLimit(algorithm=algorithm),
        schedule=[HEALTHY, (5.0, 8, 0.100), (10.0, 8, 0.010)],
        duration=20.0,
    )
    assert run.median_limit(7, 10) <= 4  # slow: the limit shrank
    assert 8 <= run.median_limit(12, 20) <= 16  # back within two seconds
    assert run.median_latency(12, 20) < 0.020


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_timeouts_collapse_the_limit_and_it_comes_back(algorithm: str) -> None:
    # The server hangs (5 s per request) from 5 s to 10 s; attempts time out after 1 s.
    run = simulate(
        AdaptiveLimit(algorithm=algorithm),
        schedule=[HEALTHY, (5.0, 8, 5.0), (10.0, 8, 0.010)],
        duration=25.0,
        timeout=1.0,
    )
    assert run.median_limit(7, 10) <= 2
    assert run.timeouts < 60  # ~20 in flight when it hung, then one or two at a time
    # The server still works off the hung requests for up to 5 s after; then back.
    assert 8 <= run.median_limit(18, 25) <= 16


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_dependency_slower_for_good_gets_its_limit_back_at_the_next_probe(
    algorithm: str,
) -> None:
    run = simulate(
        AdaptiveLimit(algorithm=algorithm, probe_interval=10.0),
        schedule=[HEALTHY, (5.0, 8, 0.040)],
        rate=400.0,
        duration=40.0,
    )
    assert run.median_limit(6, 9) <= 2  # 4x the minimum: to the limit, that is queueing
    assert run.controller is not None
    assert run.controller.min_rtt is not None
    assert run.controller.min_rtt == pytest.approx(0.041, rel=0.05)  # measured afresh
    assert 8 <= run.median_limit(20, 40) <= 16
