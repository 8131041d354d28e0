"""Breaker against a naive reference model, driven by a hypothesis state machine.

The model keeps every outcome in a plain list and recomputes the window from
scratch at each question, so that it is obviously right; the breaker's
aggregated windows (a ring of codes, a ring of buckets) must agree with it.

The time window's model is the breaker's documented bucketing: 20 buckets of
width ``window_size / 20``, a call at time t in bucket ``floor(t / width)``, the
window being the newest 20 buckets, the current one included.

Reading is pure: the invariants read the breaker after every step, and the
model's questions change nothing. An OPEN breaker whose time is up *reads*
HALF_OPEN, but the transition (and its listeners) waits for the next
``acquire()`` or manual change; ``record()`` and ``release()`` never make it
(no permit belongs to an OPEN generation). The transitions the breaker
announced must match the model's exactly, so a reader that made a transition
would show up as an extra one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from seawall import Breaker, BreakerState, CircuitBreaker, CircuitOpenError, Transition
from seawall._breaker import MAX_OPEN_DURATION
from seawall.testing import ManualClock

CLOSED = BreakerState.CLOSED
OPEN = BreakerState.OPEN
HALF_OPEN = BreakerState.HALF_OPEN
FORCED_OPEN = BreakerState.FORCED_OPEN
DISABLED = BreakerState.DISABLED

SLOW_CALL_DURATION = 1.0
BUCKETS = 20

# (duration, failed) of a call's outcome; slow means duration >= SLOW_CALL_DURATION.
OUTCOMES = st.sampled_from(
    [
        (0.0, False),
        (0.999, False),
        (SLOW_CALL_DURATION, False),
        (3.0, False),
        (0.0, True),
        (0.5, True),
        (SLOW_CALL_DURATION, True),
        (7.0, True),
    ]
)
# Mostly fast successes: a burst of them fills a window (and spills it over)
# without tripping it.
HEALTHY = st.sampled_from([(0.0, False)] * 6 + [(0.1, False), (3.0, False), (0.0, True)])

# Clock steps, in bucket widths: within a bucket, onto an edge, across a few,
# up to and past the whole window.
STEPS = st.sampled_from([0.0, 0.1, 0.5, 0.999, 1.0, 1.5, 2.0, 5.0, 19.0, 19.5, 20.0, 21.0, 60.0])


@dataclass
class Permit:
    real: int  # what the breaker handed out
    epoch: int  # the model's count of transitions when it was admitted


@dataclass(frozen=True)
class Outcome:
    at: float
    failed: bool
    slow: bool


class Model:
    """Resilience4j's breaker, spelled out the long way."""

    def __init__(self, config: CircuitBreaker, clock: ManualClock) -> None:
        self.cfg = config
        self.clock = clock
        self.state = CLOSED  # recorded: what the last transition set
        self.epoch = 0
        self.outcomes: list[Outcome] = []  # every call recorded since the window was emptied
        self.probes: list[Outcome] = []  # recorded probes of this HALF_OPEN
        self.outstanding: list[Permit] = []  # admitted calls without an outcome yet
        self.opened_at = 0.0
        self.open_for = 0.0
        self.consecutive = 0
        self.transitions: list[tuple[BreakerState, BreakerState, str, float, float | None]] = []

    # -- questions (they change nothing) ------------------------------------------------

    def effective(self) -> BreakerState:
        """The state a reader sees: an OPEN whose time is up reads HALF_OPEN."""
        if self.state is OPEN and self.clock.now() >= self.opened_at + self.open_for:
            return HALF_OPEN
        return self.state

    def window(self) -> list[Outcome]:
        cfg = self.cfg
        if cfg.window == "count":
            return self.outcomes[-int(cfg.window_size) :]  # type: ignore[arg-type]
        width = float(cfg.window_size) / BUCKETS  # type: ignore[arg-type]
        current = math.floor(self.clock.now() / width)
        return [o for o in self.outcomes if math.floor(o.at / width) > current - BUCKETS]

    def probes_in_use(self) -> int:
        if self.effective() is not HALF_OPEN:
            return 0
        # A pending HALF_OPEN has none: no permit belongs to an OPEN epoch.
        return sum(p.epoch == self.epoch for p in self.outstanding)

    def admits(self) -> bool:
        state = self.effective()
        if state is CLOSED or state is DISABLED:
            return True
        if state is HALF_OPEN:
            return self.probes_in_use() + len(self.probes) < self.cfg.half_open_calls
        return False

    def retry_after(self) -> float | None:
        if self.effective() is OPEN:
            return max(0.0, self.opened_at + self.open_for - self.clock.now())
        return None

    # -- changes -------------------------------------------------------------------

    def tick(self) -> None:
        """OPEN becomes HALF_OPEN once its time is up: on a call or a manual change only."""
        if self.state is OPEN and self.clock.now() >= self.opened_at + self.open_for:
            self.go(HALF_OPEN, "open_duration_elapsed")

    def go(self, to: BreakerState, reason: str) -> None:
        self.transitions.append(
            (self.state, to, reason, self.clock.now(), self.open_for if to is OPEN else None)
        )
        self.state = to
        self.epoch += 1
        self.probes = []
        if to is CLOSED:
            self.outcomes = []

    def open(self, reason: str) -> None:
        cfg = self.cfg
        self.consecutive += 1
        open_for = cfg.open_duration
        for _ in range(self.consecutive - 1):
            open_for *= cfg.open_duration_multiplier
        if cfg.max_open_duration is not None:
            open_for = min(open_for, cfg.max_open_duration)
        else:  # never infinite: a day at most, or open_duration if longer
            open_for = min(open_for, max(cfg.open_duration, MAX_OPEN_DURATION))
        self.open_for = open_for
        self.opened_at = self.clock.now()
        self.go(OPEN, reason)

    def admit(self) -> Permit:
        permit = Permit(real=-1, epoch=self.epoch)
        self.outstanding.append(permit)
        return permit

    def record(self, permit: Permit, duration: float, failed: bool) -> None:
        self.outstanding.remove(permit)
        if permit.epoch != self.epoch:
            return  # stale
        outcome = Outcome(self.clock.now(), failed, duration >= SLOW_CALL_DURATION)
        cfg = self.cfg
        if self.state is CLOSED:
            self.outcomes.append(outcome)
            window = self.window()
            n = len(window)
            if n >= cfg.minimum_calls:
                if sum(o.failed for o in window) / n >= cfg.failure_rate_threshold:
                    self.open("failure_rate")
                elif sum(o.slow for o in window) / n >= cfg.slow_call_rate_threshold:
                    self.open("slow_call_rate")
        elif self.state is HALF_OPEN:
            self.probes.append(outcome)
            n = len(self.probes)
            if n == cfg.half_open_calls:
                failures = sum(o.failed for o in self.probes)
                slow = sum(o.slow for o in self.probes)
                if (
                    failures / n >= cfg.failure_rate_threshold
                    or slow / n >= cfg.slow_call_rate_threshold
                ):
                    self.open("probes_failed")
                else:
                    self.consecutive = 0
                    self.go(CLOSED, "probes_passed")

    def release(self, permit: Permit) -> None:
        self.outstanding.remove(permit)


class BreakerMachine(RuleBasedStateMachine):
    window_kind = "count"

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock(1000.0)
        self.seen: list[Transition] = []

    @initialize(
        size=st.integers(4, 10),
        minimum_calls=st.integers(1, 4),
        half_open_calls=st.integers(1, 3),
        failure_rate_threshold=st.sampled_from([0.25, 0.5, 0.75, 1.0]),
        slow_call_rate_threshold=st.sampled_from([0.5, 0.75, 1.0]),
        open_duration=st.sampled_from([0.5, 1.0, 2.5]),
        multiplier=st.sampled_from([1.0, 1.5, 2.0, 3.0]),
        cap=st.sampled_from([None, 1.0, 2.0, 4.0]),
    )
    def setup(
        self,
        size: int,
        minimum_calls: int,
        half_open_calls: int,
        failure_rate_threshold: float,
        slow_call_rate_threshold: float,
        open_duration: float,
        multiplier: float,
        cap: float | None,
    ) -> None:
        config = CircuitBreaker(
            window=self.window_kind,  # type: ignore[arg-type]
            window_size=size if self.window_kind == "count" else float(size),
            minimum_calls=minimum_calls,
            half_open_calls=half_open_calls,
            failure_rate_threshold=failure_rate_threshold,
            slow_call_rate_threshold=slow_call_rate_threshold,
            slow_call_duration=SLOW_CALL_DURATION,
            open_duration=open_duration,
            open_duration_multiplier=multiplier,
            max_open_duration=None if cap is None else open_duration * cap,
        )
        self.breaker = Breaker(config, clock=self.clock, dependency="model")
        self.breaker.on_transition(self.seen.append)
        self.model = Model(config, self.clock)
        # Bucket width of a time window; for a count window, a step of similar size.
        self.width = size / BUCKETS if self.window_kind == "time" else 0.25

    # -- rules -----------------------------------------------------------------------

    @rule(steps=STEPS)
    def advance(self, steps: float) -> None:
        self.clock.advance(steps * self.width)

    @precondition(lambda self: self.model.effective() is OPEN)
    @rule(early=st.booleans())
    def advance_to_the_end_of_the_open_time(self, early: bool) -> None:
        left = self.model.opened_at + self.model.open_for - self.clock.now()
        self.clock.advance(max(0.0, left - (0.001 if early else 0.0)))

    @rule()
    def acquire(self) -> None:
        expected = self.model.admits()
        assert self.breaker.would_admit() is expected
        retry_after = self.model.retry_after()
        self.model.tick()  # the call makes a pending HALF_OPEN real
        if expected:
            self.model.admit().real = self.breaker.acquire()
        else:
            with pytest.raises(CircuitOpenError) as caught:
                self.breaker.acquire()
            assert caught.value.retry_after == retry_after

    @precondition(lambda self: self.model.outstanding)
    @rule(which=st.integers(0, 100), outcome=OUTCOMES)
    def record(self, which: int, outcome: tuple[float, bool]) -> None:
        permit = self.model.outstanding[which % len(self.model.outstanding)]
        duration, failed = outcome
        self.breaker.record(permit.real, duration, failed)
        self.model.record(permit, duration, failed)

    @precondition(lambda self: self.model.outstanding)
    @rule(which=st.integers(0, 100))
    def release(self, which: int) -> None:
        """The call was cancelled (or raised an ignored error)."""
        permit = self.model.outstanding[which % len(self.model.outstanding)]
        self.breaker.release(permit.real)
        self.model.release(permit)

    @rule(outcome=OUTCOMES)
    def call(self, outcome: tuple[float, bool]) -> None:
        """A whole call: admitted (or not), then its outcome at once."""
        before = len(self.model.outstanding)
        self.acquire()
        if len(self.model.outstanding) > before:
            self.record(before, outcome)

    @rule(outcomes=st.lists(HEALTHY, min_size=1, max_size=12))
    def burst(self, outcomes: list[tuple[float, bool]]) -> None:
        """Calls in a row, at one instant."""
        for outcome in outcomes:
            self.call(outcome)

    @rule(action=st.sampled_from(["force_open", "disable", "force_closed", "reset"]))
    def manual(self, action: str) -> None:
        getattr(self.breaker, action)()
        self.model.tick()
        if action == "reset":
            self.model.consecutive = 0
        to, reason = {
            "force_open": (FORCED_OPEN, "forced_open"),
            "disable": (DISABLED, "disabled"),
            "force_closed": (CLOSED, "forced_closed"),
            "reset": (CLOSED, "reset"),
        }[action]
        self.model.go(to, reason)

    @precondition(lambda self: self.model.state in (FORCED_OPEN, DISABLED))
    @rule(action=st.sampled_from(["force_closed", "reset"]))
    def back_to_closed(self, action: str) -> None:
        self.manual(action)

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def same_state(self) -> None:
        assert self.breaker.state is self.model.effective()
        assert self.breaker._state is self.model.state  # the engine's raw read

    @invariant()
    def same_statistics(self) -> None:
        model = self.model
        stats = self.breaker.statistics()
        state = model.effective()
        assert stats.state is state
        assert stats.consecutive_openings == model.consecutive
        assert stats.retry_after == model.retry_after()
        assert stats.half_open_permits_in_use == model.probes_in_use()
        assert stats.half_open_permits_in_use <= model.cfg.half_open_calls
        if state is CLOSED:
            window = model.window()
            if len(window) < len(model.outcomes) and currently_in_test_context():
                event("calls fell out of the window")
            calls = len(window)
            failures = sum(o.failed for o in window)
            slow = sum(o.slow for o in window)
            assert (stats.calls, stats.failures, stats.slow_calls) == (calls, failures, slow)
            if calls < model.cfg.minimum_calls:
                assert stats.failure_rate is None
                assert stats.slow_call_rate is None
            else:
                assert stats.failure_rate == failures / calls
                assert stats.slow_call_rate == slow / calls
        elif state is HALF_OPEN:
            assert stats.calls == len(model.probes)
            assert stats.failures == sum(o.failed for o in model.probes)
            assert stats.slow_calls == sum(o.slow for o in model.probes)
        elif state is not OPEN:
            assert (stats.calls, stats.failures, stats.slow_calls) == (0, 0, 0)

    @invariant()
    def same_transitions(self) -> None:
        seen = [(t.from_state, t.to_state, t.reason, t.at, t.open_for) for t in self.seen]
        assert seen == self.model.transitions
        if currently_in_test_context():
            for _, to, reason, _, _ in self.model.transitions:
                event(f"went {to.value} ({reason})")


class CountWindowMachine(BreakerMachine):
    window_kind = "count"


class TimeWindowMachine(BreakerMachine):
    window_kind = "time"


SETTINGS: dict[str, Any] = {
    "max_examples": 150,
    "stateful_step_count": 60,
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow],
}

TestCountWindow = CountWindowMachine.TestCase
TestCountWindow.settings = settings(**SETTINGS)
TestTimeWindow = TimeWindowMachine.TestCase
TestTimeWindow.settings = settings(**SETTINGS)


# -- the model itself must not be vacuous -------------------------------------------


def drive(machine: BreakerMachine, steps: list[tuple[str, dict[str, Any]]]) -> None:
    for name, kwargs in steps:
        getattr(machine, name)(**kwargs)
        machine.same_state()
        machine.same_statistics()
        machine.same_transitions()


@pytest.mark.parametrize("machine_class", [CountWindowMachine, TimeWindowMachine])
def test_the_model_walks_through_every_state(machine_class: type[BreakerMachine]) -> None:
    machine = machine_class()
    machine.setup(
        size=4,
        minimum_calls=2,
        half_open_calls=1,
        failure_rate_threshold=0.5,
        slow_call_rate_threshold=1.0,
        open_duration=1.0,
        multiplier=2.0,
        cap=None,
    )
    fail = {"which": 0, "outcome": (0.0, True)}
    drive(
        machine,
        [
            ("acquire", {}),
            ("record", fail),
            ("acquire", {}),
            ("acquire", {}),
            ("record", fail),  # 2 of 2 failed: OPEN, one permit still out (stale)
            ("acquire", {}),  # rejected
            ("advance_to_the_end_of_the_open_time", {"early": False}),
            ("acquire", {}),  # the probe
            ("release", {"which": 1}),  # cancelled: its permit comes back
            ("acquire", {}),
            ("record", {"which": 1, "outcome": (7.0, True)}),  # OPEN again, for 2 s
            ("record", {"which": 0, "outcome": (0.0, False)}),  # the stale one: dropped
            ("manual", {"action": "disable"}),
            ("manual", {"action": "reset"}),
        ],
    )
    assert [t[:3] for t in machine.model.transitions] == [
        (CLOSED, OPEN, "failure_rate"),
        (OPEN, HALF_OPEN, "open_duration_elapsed"),
        (HALF_OPEN, OPEN, "probes_failed"),
        (OPEN, DISABLED, "disabled"),
        (DISABLED, CLOSED, "reset"),
    ]
    assert machine.model.transitions[2][4] == 2.0
    machine.teardown()
