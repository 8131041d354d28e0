"""Thousands of guarded calls cancelled at random points: nothing leaks, nothing hangs.

Each storm is planned from a seeded random generator (the backends' schedulers
still interleave the tasks as they like). Cancellation comes from tiny real
deadlines and from a killer task; time for the breaker, the retry backoff and
the total deadline is a ManualClock moved by a driver task, which takes the
breaker from open into half-open while the storm runs.
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass

import anyio
import anyio.lowlevel
import pytest

import seawall
from seawall import (
    Backoff,
    BreakerState,
    Bulkhead,
    CircuitBreaker,
    CircuitOpenError,
    Policy,
    Retry,
    RetryBudget,
    Timeouts,
    Transition,
)
from seawall.testing import ManualClock

pytestmark = pytest.mark.anyio

TASKS = 2500
SLOTS = 8
PROBES = 4


@dataclass(frozen=True, slots=True)
class Plan:
    """What one task does, drawn before the storm starts."""

    use_with: bool  # ``async with g:`` instead of ``g.call``
    cancel: str  # "deadline" (a tiny real deadline), "killer", or "none"
    deadline: float  # real seconds, for cancel == "deadline"
    arrival: int  # checkpoints before the call
    steps: int  # checkpoints inside each attempt
    failures: int  # attempts that raise ConnectionError
    hang: bool  # the attempt waits until it is cancelled


def make_plans(seed: int, n: int) -> list[Plan]:
    rng = random.Random(seed)
    plans = []
    for _ in range(n):
        cancel = rng.choices(["deadline", "killer", "none"], weights=[4, 4, 2])[0]
        plans.append(
            Plan(
                use_with=rng.random() < 0.3,
                cancel=cancel,
                deadline=rng.uniform(0.0, 0.004),
                arrival=rng.randrange(100),
                steps=rng.randrange(6),
                failures=rng.choice([0, 0, 0, 0, 0, 0, 0, 1, 2, 3]),
                # only a tiny deadline ends a hung attempt soon (else the attempt timeout)
                hang=cancel == "deadline" and rng.random() < 0.2,
            )
        )
    return plans


def assert_nothing_held(g: seawall.Guard) -> None:
    assert g.bulkhead is not None
    assert g.breaker is not None
    assert g.bulkhead.statistics() == seawall.BulkheadStatistics(in_use=0, limit=SLOTS, waiting=0)
    assert g.breaker.statistics().half_open_permits_in_use == 0
    # the breaker's own books: every permit handed out came back or was recorded
    assert g.breaker._half_open_issued == g.breaker._half_open_done


@pytest.mark.parametrize("seed", [pytest.param(7, id="seed-7"), pytest.param(2024, id="seed-2024")])
async def test_storm_of_cancelled_calls_leaks_nothing(seed: int) -> None:
    clock = ManualClock()
    policy = Policy(
        timeouts=Timeouts(attempt=0.5, total=5.0),  # total on the ManualClock
        retry=Retry(
            attempts=3,
            backoff=Backoff(initial=0.01, maximum=0.05),
            budget=RetryBudget(ratio=0.5, min_per_second=20.0, window=1.0),
        ),
        breaker=CircuitBreaker(
            window_size=20, minimum_calls=10, open_duration=0.2, half_open_calls=PROBES
        ),
        bulkhead=Bulkhead(max_concurrent=SLOTS, max_wait=0.02),
    )
    g = seawall.guard("storm", policy, clock=clock)
    assert g.breaker is not None
    assert g.bulkhead is not None
    transitions: list[Transition] = []
    g.breaker.on_transition(transitions.append)
    # The storm hits an open breaker; the driver's clock half-opens it as it runs.
    for _ in range(10):
        with pytest.raises(ConnectionError):
            async with g:
                raise ConnectionError("down")
    assert g.breaker.state is BreakerState.OPEN
    plans = make_plans(seed, TASKS)
    kill_rng = random.Random(seed + 1)
    live: set[anyio.CancelScope] = set()
    outcomes: collections.Counter[str] = collections.Counter()
    with_outcomes: collections.Counter[str] = collections.Counter()
    peak = {"waiting": 0, "in_use": 0, "probes": 0}
    attempts_seen: dict[int, int] = collections.defaultdict(int)

    async def attempt(i: int, plan: Plan) -> str:
        assert g.breaker is not None
        assert g.bulkhead is not None
        attempts_seen[i] += 1
        slots = g.bulkhead.statistics()
        assert 1 <= slots.in_use <= SLOTS
        peak["waiting"] = max(peak["waiting"], slots.waiting)
        if g.breaker.state is BreakerState.HALF_OPEN:  # this attempt may be a probe
            probes = g.breaker.statistics().half_open_permits_in_use
            assert probes <= PROBES
            peak["probes"] = max(peak["probes"], probes)
        for _ in range(plan.steps):
            await anyio.lowlevel.checkpoint()
        if plan.hang:
            await anyio.sleep_forever()
        if attempts_seen[i] <= plan.failures:
            raise ConnectionError(f"task {i} attempt {attempts_seen[i]}")
        return "ok"

    async def worker(i: int, plan: Plan) -> None:
        if plan.cancel == "deadline":
            scope = anyio.CancelScope(deadline=anyio.current_time() + plan.deadline)
        else:
            scope = anyio.CancelScope()
        if plan.cancel == "killer":
            live.add(scope)
        outcome = "unset"
        try:
            with scope:
                for _ in range(plan.arrival):
                    await anyio.lowlevel.checkpoint()
                try:
                    if plan.use_with:
                        async with g:
                            outcome = await attempt(i, plan)
                    else:
                        outcome = await g.call(attempt, i, plan)
                except Exception as exc:
                    outcome = type(exc).__name__
        finally:
            live.discard(scope)
        outcome = "cancelled" if scope.cancelled_caught else outcome
        outcomes[outcome] += 1
        if plan.use_with:
            with_outcomes[outcome] += 1

    async def driver() -> None:
        """Moves time (the breaker reopens and half-opens) and samples the figures."""
        assert g.breaker is not None
        assert g.bulkhead is not None
        while True:
            clock.advance(0.02)
            g.breaker.state  # reading it lets an open breaker half-open  # noqa: B018
            b = g.bulkhead.statistics()
            assert 0 <= b.in_use <= SLOTS
            assert 0 <= g.breaker.statistics().half_open_permits_in_use <= PROBES
            peak["waiting"] = max(peak["waiting"], b.waiting)
            peak["in_use"] = max(peak["in_use"], b.in_use)
            await anyio.lowlevel.checkpoint()

    async def killer() -> None:
        while True:
            for _ in range(kill_rng.randrange(1, 4)):
                await anyio.lowlevel.checkpoint()
            if live:
                victim = kill_rng.choice(sorted(live, key=id))
                live.discard(victim)
                victim.cancel()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as helpers:
            helpers.start_soon(driver)
            helpers.start_soon(killer)
            async with anyio.create_task_group() as workers:
                for i, plan in enumerate(plans):
                    workers.start_soon(worker, i, plan)
            helpers.cancel_scope.cancel()

    assert sum(outcomes.values()) == TASKS
    assert set(outcomes) <= {
        "ok",
        "cancelled",
        "ConnectionError",
        "TimeoutError",
        "DeadlineExceededError",
        "CircuitOpenError",
        "BulkheadFullError",
    }, outcomes
    # the storm went through every kind of ending that matters here
    assert outcomes["cancelled"] > 0
    assert outcomes["ok"] > 0
    assert with_outcomes["ok"] > 0  # blocks under timeouts finish as successes
    assert outcomes["CircuitOpenError"] > 0
    assert peak["waiting"] > 0  # calls queued for the bulkhead
    assert peak["in_use"] == SLOTS
    assert BreakerState.HALF_OPEN in {t.to_state for t in transitions}
    assert peak["probes"] > 0  # probes were in flight while the storm ran
    assert_nothing_held(g)


async def test_half_open_probes_cancelled_at_random_come_back() -> None:
    """Every probe hangs until it is cancelled: only returned permits let new ones in."""
    clock = ManualClock()
    policy = Policy(
        timeouts=Timeouts(attempt=None, total=None),
        retry=Retry(attempts=3, backoff=Backoff(initial=0.0, maximum=0.0), budget=None),
        breaker=CircuitBreaker(
            minimum_calls=1, window_size=1, open_duration=1.0, half_open_calls=PROBES
        ),
        bulkhead=Bulkhead(max_concurrent=2, max_wait=5.0),  # probes queue for slots
    )
    g = seawall.guard("probes", policy, clock=clock)
    assert g.breaker is not None
    assert g.bulkhead is not None
    with pytest.raises(ConnectionError):
        async with g:
            raise ConnectionError("down")
    clock.advance(1.0)
    assert g.breaker.state is BreakerState.HALF_OPEN

    seed = 11
    rng = random.Random(seed)
    n = 2000
    plans = [
        (rng.random() < 0.3, rng.random() < 0.5, rng.uniform(0.0, 0.01), rng.randrange(40))
        for _ in range(n)
    ]
    holders: set[anyio.CancelScope] = set()  # tasks inside a call, a probe permit in hand
    admitted = 0
    rejected = 0
    peak_waiting = 0

    async def hang() -> None:
        nonlocal admitted
        admitted += 1
        await anyio.sleep_forever()

    async def worker(use_with: bool, timed: bool, deadline: float, arrival: int) -> None:
        nonlocal rejected
        scope = (
            anyio.CancelScope(deadline=anyio.current_time() + deadline)
            if timed
            else anyio.CancelScope()
        )
        with scope:
            for _ in range(arrival):
                await anyio.lowlevel.checkpoint()
            for _ in range(30):  # knock until a probe permit is free, or give up
                holders.add(scope)  # the killer may strike in the bulkhead queue too
                try:
                    if use_with:
                        async with g:
                            await hang()
                    else:
                        await g.call(hang)
                except CircuitOpenError:
                    rejected += 1
                finally:
                    holders.discard(scope)
                await anyio.lowlevel.checkpoint()

    async def killer() -> None:
        nonlocal peak_waiting
        kill_rng = random.Random(seed + 1)
        while True:
            await anyio.lowlevel.checkpoint()
            assert g.bulkhead is not None
            peak_waiting = max(peak_waiting, g.bulkhead.statistics().waiting)
            for scope in sorted(holders, key=id):
                if kill_rng.random() < 0.3:
                    scope.cancel()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as helpers:
            helpers.start_soon(killer)
            async with anyio.create_task_group() as workers:
                for plan in plans:
                    workers.start_soon(worker, *plan)
            helpers.cancel_scope.cancel()

    # permits went round: far more probes were admitted than exist at once
    assert admitted > 5 * PROBES
    assert rejected > 0
    assert peak_waiting > 0
    # nothing was ever recorded, so the breaker is still half-open, with every permit back
    assert g.breaker.state is BreakerState.HALF_OPEN
    assert g.breaker.statistics().half_open_permits_in_use == 0
    assert g.breaker._half_open_issued == g.breaker._half_open_done == 0
    assert g.bulkhead.statistics() == seawall.BulkheadStatistics(in_use=0, limit=2, waiting=0)
    # and all of them can be used: PROBES successful calls close the breaker
    for _ in range(PROBES):
        assert g.breaker.state is BreakerState.HALF_OPEN
        await g.call(anyio.sleep, 0)
    assert g.breaker.state is BreakerState.CLOSED
