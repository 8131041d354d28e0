"""Thousands of HTTP calls through the whole client stack, cancelled at random moments.

Each storm sends 2000 calls (GET, PUT, POST with and without an
Idempotency-Key) through one ResilientClient with a queueing bulkhead, a
breaker, retries and a stale-if-error cache to a real loopback server whose
paths answer healthy, slow, 5xx, reset or never. The plan of every call (what,
where, whether and when it is cancelled, when it arrives) comes from a seeded
generator.

The storm comes in waves, and the test, not the machine's timing, decides
which layer each wave meets. The breaker's clock is a ManualClock that only the
driver moves, so the breaker changes state only when the script says so:

1. ``queue``: the driver holds every bulkhead slot, as calls hung upstream
   would, and the breaker is closed: every call of the wave queues. The slots
   stay held until a queued call has outwaited ``max_wait`` (bulkhead_full)
   and another was cancelled while the bulkhead was full; then the rest of the
   wave runs through the closed breaker to the faulty server.
2. ``open``: the driver opens the breaker with failing calls and keeps time
   still: every call of the wave is refused (a GET gets the stale copy).
3. ``probe``: time moves past the open duration; ``PROBES`` calls, alone, are
   the half-open probes whose outcomes close or reopen the breaker.
4. ``recover``: the rest arrive while the driver moves time on every few
   milliseconds, so the breaker opens, half-opens and probes, as the faults
   decide, while calls are queued and in flight.

Afterwards every counter must add up, and nothing may be left held.
"""

from __future__ import annotations

import collections
import random
import ssl
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.abc
import anyio.to_thread
import httpx
import pytest

import seawall
from seawall import BreakerState, Transition
from seawall.testing import ManualClock, disable_waits
from seawall.testing._upstream import Fault, FaultyUpstream

CALLS = 2000
SLOTS = 16
PROBES = 4
MIN_CALLS = 10
OPEN_FOR = 5.0  # ManualClock seconds
MAX_WAIT = 0.15  # real seconds a call may queue for a bulkhead slot
SPREAD = 0.4  # real seconds over which the calls of a wave arrive
SEEDS = [pytest.param(5, id="seed-5"), pytest.param(1337, id="seed-1337")]
_TLS = ssl.create_default_context()

#: path -> (server script, share of the calls)
PATHS: dict[str, tuple[tuple[Fault, ...], float]] = {
    "/ok": ((Fault.ok(),), 0.50),
    "/slow": ((Fault.latency(0.03),), 0.15),
    "/flaky": ((Fault(status=500, ratio=0.5, seed=11),), 0.10),
    "/unavailable": ((Fault.error(503),), 0.08),
    "/reset": ((Fault.reset_connection(),), 0.08),
    "/hang": ((Fault.hang(),), 0.03),
    "/slow-body": ((Fault.slow_body(1.0),), 0.06),
}
METHODS = ["GET", "GET", "GET", "PUT", "POST-key", "POST-nokey"]

Cancel = Literal["none", "deadline", "killer"]
CANCELS: list[Cancel] = ["none", "deadline", "killer"]
Wave = Literal["queue", "open", "probe", "recover"]
WAVES: list[Wave] = ["queue", "open", "probe", "recover"]
#: The random waves and their shares of the calls (the probe wave is PROBES calls).
RANDOM_WAVES: list[Wave] = ["queue", "open", "recover"]
RANDOM_WAVE_WEIGHTS = [7, 4, 9]


@dataclass(frozen=True, slots=True)
class Plan:
    """What one call does, drawn before the storm."""

    index: int
    wave: Wave
    method: str
    path: str
    cancel: Cancel
    after: float  # real seconds after arrival, for a cancelled call
    arrival: float  # real seconds after its wave starts


def make_plans(seed: int) -> list[Plan]:
    rng = random.Random(seed)
    paths = list(PATHS)
    weights = [share for _, share in PATHS.values()]
    plans = [
        Plan(
            index=i,
            wave=rng.choices(RANDOM_WAVES, RANDOM_WAVE_WEIGHTS)[0],
            method=rng.choice(METHODS),
            path=rng.choices(paths, weights)[0],
            cancel=rng.choices(CANCELS, [4, 3, 3])[0],
            after=rng.uniform(0.0, 0.3),
            arrival=rng.uniform(0.0, SPREAD),
        )
        for i in range(CALLS - PROBES)
    ]
    # The probes: healthy calls, never cancelled, so each one takes a permit and
    # records an outcome (a success, or a failure if an attempt timed out).
    plans += [
        Plan(
            index=i,
            wave="probe",
            method=rng.choice(METHODS),
            path="/ok",
            cancel="none",
            after=0.0,
            arrival=0.0,
        )
        for i in range(CALLS - PROBES, CALLS)
    ]
    return plans


class CountingTransport(httpx.AsyncHTTPTransport):
    """The real pooled transport, counting the attempts that reach it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.started = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.started += 1
        return await super().handle_async_request(request)


def make_policy() -> seawall.Policy:
    return seawall.Policy(
        # ``total`` runs on the ManualClock, which the driver moves: no total.
        timeouts=seawall.Timeouts(
            connect=0.5, read=0.1, write=0.5, pool=1.0, attempt=0.25, total=None
        ),
        retry=seawall.Retry(
            attempts=3,
            backoff=seawall.Backoff(initial=0.01, maximum=0.05),
            budget=seawall.RetryBudget(ratio=0.5, min_per_second=50.0, window=10.0),
        ),
        breaker=seawall.CircuitBreaker(
            window_size=20,
            minimum_calls=MIN_CALLS,
            failure_rate_threshold=0.5,
            open_duration=OPEN_FOR,
            half_open_calls=PROBES,
        ),
        bulkhead=seawall.Bulkhead(max_concurrent=SLOTS, max_wait=MAX_WAIT),
        fallback=seawall.Fallback(stale_if_error=1e9),
        pool=seawall.Pool(max_connections=SLOTS, max_keepalive=SLOTS),
    )


def send(client: seawall.ResilientClient, plan: Plan) -> Any:
    url = f"{plan.path}?call={plan.index}"
    if plan.method == "GET":
        return client.get(plan.path)  # one URL per path: the cache can answer
    if plan.method == "PUT":
        return client.put(url, json={"i": plan.index})
    key = f"call-{plan.index}" if plan.method == "POST-key" else None
    return client.post(url, json={"i": plan.index}, idempotency_key=key)


@pytest.mark.parametrize("seed", SEEDS)
def test_every_wave_holds_the_calls_its_checks_need(seed: int) -> None:
    """The storm's checks rest on the plan, not on luck: these calls exist."""
    plans = make_plans(seed)
    assert len(plans) == CALLS
    wave = {name: [p for p in plans if p.wave == name] for name in WAVES}
    # queue: a call that waits out max_wait, one cancelled while it queues
    assert any(p.cancel == "none" for p in wave["queue"])
    assert sum(p.cancel != "none" and p.after < MAX_WAIT / 2 for p in wave["queue"]) >= 10
    # open: a refused GET (the stale copy) and a refused call with no copy to give
    assert any(p.cancel == "none" and p.method == "GET" for p in wave["open"])
    assert any(p.cancel == "none" and p.method != "GET" for p in wave["open"])
    # probe: exactly as many healthy, uncancelled calls as there are permits
    assert len(wave["probe"]) == PROBES
    assert all(p.cancel == "none" and p.path == "/ok" for p in wave["probe"])
    assert len(wave["recover"]) > CALLS // 4


# httpx's request-body iterator is an async generator: when a cancellation lands while
# httpcore sends the body, trio warns as it collects it (encode/httpx#3686).
@pytest.mark.filterwarnings(
    "ignore:Async generator 'httpx._content.ByteStream.__aiter__' was garbage collected"
    ":ResourceWarning"
)
@pytest.mark.anyio
@pytest.mark.parametrize("seed", SEEDS)
async def test_http_storm_with_random_cancellation_leaves_consistent_counters(seed: int) -> None:
    plans = make_plans(seed)
    clock = ManualClock()
    inner = CountingTransport(
        limits=httpx.Limits(max_connections=SLOTS, max_keepalive_connections=SLOTS),
        verify=_TLS,
    )
    # what the callers got, and report.outcome of each, per wave
    results: dict[Wave, collections.Counter[str]] = {w: collections.Counter() for w in WAVES}
    outcomes: dict[Wave, collections.Counter[str]] = {w: collections.Counter() for w in WAVES}
    escaped: list[BaseException] = []
    unreported: list[BaseException] = []  # errors out of a call without a CallReport
    transitions: list[tuple[Transition, int]] = []
    peak = {"waiting": 0, "in_use": 0, "probes": 0}  # printed, not asserted
    scopes: dict[int, anyio.CancelScope] = {}
    started = {w: anyio.Event() for w in WAVES}
    done = {w: anyio.Event() for w in WAVES}
    left = collections.Counter(p.wave for p in plans)
    hold_over = anyio.Event()  # the queue wave has proved what it is for

    async with FaultyUpstream() as upstream:
        for path, (script, _) in PATHS.items():
            # The first request of each path is healthy: the warm-up fills the cache.
            upstream.route(path, Fault.ok(), *script)
        client = seawall.ResilientClient(
            "storm", policy=make_policy(), base_url=upstream.url, transport=inner, clock=clock
        )
        breaker = client.breaker
        bulkhead = client.bulkhead
        breaker.on_transition(lambda t: transitions.append((t, inner.started)))
        async with client:
            for path in PATHS:
                assert (await client.get(path)).status_code == 200
            assert breaker.state is BreakerState.CLOSED
            warm_attempts = inner.started

            async def kill(index: int, after: float) -> None:
                await anyio.sleep(after)
                victim = scopes.get(index)
                if victim is not None:
                    victim.cancel()

            async def call(plan: Plan, helpers: anyio.abc.TaskGroup) -> None:
                await started[plan.wave].wait()
                await anyio.sleep(plan.arrival)
                scope = anyio.CancelScope()
                if plan.cancel == "deadline":
                    scope.deadline = anyio.current_time() + plan.after
                elif plan.cancel == "killer":
                    helpers.start_soon(kill, plan.index, plan.after)
                scopes[plan.index] = scope
                result = "unset"
                outcome = None
                with scope:
                    try:
                        response = await send(client, plan)
                    except (httpx.HTTPError, seawall.SeawallError) as exc:
                        result = type(exc).__name__
                        error_report = seawall.report_of(exc)
                        if error_report is None:
                            unreported.append(exc)
                        else:
                            outcome = str(error_report.outcome)
                    except Exception as exc:  # anything else escaped: a bug
                        escaped.append(exc)
                        result = "escaped"
                    else:
                        report = seawall.report_of(response)
                        assert report is not None
                        outcome = str(report.outcome)
                        result = (
                            f"fallback-{report.fallback}"
                            if report.fallback
                            else f"status-{response.status_code}"
                        )
                del scopes[plan.index]
                if scope.cancelled_caught:
                    result = "cancelled"
                results[plan.wave][result] += 1
                if outcome is not None:
                    outcomes[plan.wave][outcome] += 1
                left[plan.wave] -= 1
                if left[plan.wave] == 0:
                    done[plan.wave].set()
                queue = outcomes["queue"]["bulkhead_full"] and results["queue"]["cancelled"]
                if queue or done["queue"].is_set():
                    hold_over.set()

            async def driver() -> None:
                """Runs the script: each wave starts once the previous one did its part."""
                # 1. queue: every slot held, the breaker closed.
                held = [bulkhead.try_acquire() for _ in range(SLOTS)]
                assert bulkhead.statistics().in_use == SLOTS
                started["queue"].set()
                await hold_over.wait()
                for token in held:
                    assert token is not None
                    bulkhead.release(token)
                await done["queue"].wait()
                # 2. open: failures open the breaker (unless the wave's already did);
                # time stands still, so it stays open for the whole wave.
                while breaker.state is BreakerState.CLOSED:
                    await client.get("/unavailable")  # 503s; the stale copy
                assert breaker.state is BreakerState.OPEN, breaker
                started["open"].set()
                await done["open"].wait()
                # 3. probe: past the open duration, the probes alone.
                retry_after = breaker.statistics().retry_after
                assert retry_after is not None
                clock.advance(retry_after)
                started["probe"].set()
                await done["probe"].wait()
                # 4. recover: time moves on while the calls come and go.
                started["recover"].set()
                while True:
                    await anyio.sleep(0.01)
                    clock.advance(OPEN_FOR / 4)

            async def sampler() -> None:
                """Checks the figures' bounds all along, and notes their peaks."""
                while True:
                    await anyio.sleep(0.005)
                    b = bulkhead.statistics()
                    s = breaker.statistics()
                    assert 0 <= b.in_use <= SLOTS
                    assert 0 <= s.half_open_permits_in_use <= PROBES
                    peak["waiting"] = max(peak["waiting"], b.waiting)
                    peak["in_use"] = max(peak["in_use"], b.in_use)
                    peak["probes"] = max(peak["probes"], s.half_open_permits_in_use)

            with disable_waits(), anyio.fail_after(15):
                async with anyio.create_task_group() as helpers:
                    helpers.start_soon(driver)
                    helpers.start_soon(sampler)
                    async with anyio.create_task_group() as calls:
                        for plan in plans:
                            calls.start_soon(call, plan, helpers)
                    helpers.cancel_scope.cancel()

            print(
                f"storm seed={seed}: peak={peak} attempts={inner.started}\n"
                + "\n".join(f"  {w}: {dict(results[w])} {dict(outcomes[w])}" for w in WAVES)
            )
            # -- every call ended, and only in the expected ways
            assert not escaped, escaped
            assert not unreported, unreported
            assert sum(sum(r.values()) for r in results.values()) == CALLS, results
            allowed = {
                "cancelled",
                "status-200",
                "status-500",
                "status-503",
                "fallback-cache",
                "ReadError",
                "ReadTimeout",
                "RemoteProtocolError",
                "CircuitOpenError",
                "BulkheadFullError",
                "OutcomeUnknownError",
            }
            for wave in WAVES:
                assert set(results[wave]) <= allowed, (wave, results[wave])

            # -- each wave went through the layer the script sent it to
            # queue: calls queued for the held slots, outwaited max_wait, were cancelled
            assert outcomes["queue"]["bulkhead_full"] > 0, outcomes["queue"]
            assert results["queue"]["cancelled"] > 0, results["queue"]
            # open: the breaker refused every call; a GET got the stale copy
            assert set(outcomes["open"]) == {"circuit_open"}, outcomes["open"]
            assert set(results["open"]) <= {"cancelled", "fallback-cache", "CircuitOpenError"}
            assert results["open"]["fallback-cache"] > 0, results["open"]
            assert results["open"]["CircuitOpenError"] > 0, results["open"]
            # probe: the probes half-opened the breaker and decided its state
            assert sum(results["probe"].values()) == PROBES, results["probe"]
            states = [t.to_state for t, _ in transitions]
            assert BreakerState.HALF_OPEN in states, states
            assert any(t.reason.startswith("probes_") for t, _ in transitions), states
            # recover: every call of it ended (counted above) and left nothing held (below)

            # -- nothing held
            slots = bulkhead.statistics()
            assert (slots.in_use, slots.waiting) == (0, 0)
            stats = breaker.statistics()
            assert stats.half_open_permits_in_use == 0
            pool = client.resilient_transport.pool_statistics()
            assert pool["in_flight"] == 0
            assert pool["connections"] == pool["idle"], pool

            # -- the breaker's books agree with the attempts that ran
            assert_breaker_window_consistent(stats, transitions, inner.started, warm_attempts)
            assert upstream.count() <= inner.started
            # A POST without a key reached the server at most once, cancelled or not.
            for plan in plans:
                if plan.method == "POST-nokey":
                    sent = [
                        r
                        for r in upstream.requests(plan.path)
                        if r.target.endswith(f"={plan.index}")
                    ]
                    assert len(sent) <= 1, plan

        closed = await anyio.to_thread.run_sync(upstream.wait_for_open_connections, 0)
        assert closed, f"{upstream.open_connections} server-side connections still open"


def assert_breaker_window_consistent(
    stats: seawall.BreakerStatistics,
    transitions: list[tuple[Transition, int]],
    started: int,
    warm_attempts: int,
) -> None:
    """The window holds at most the attempts sent since it last started afresh.

    An outcome is recorded only under the permit's own generation, so the
    calls in the window all began after the transition that opened it: after
    the last CLOSED (which empties the window) for CLOSED and OPEN, after the
    last HALF_OPEN for the probes.
    """
    if stats.state is BreakerState.HALF_OPEN:
        since = max(n for t, n in transitions if t.to_state is BreakerState.HALF_OPEN)
        assert stats.calls <= min(PROBES, started - since)
        enough = stats.calls > 0
    else:
        closed_at = [n for t, n in transitions if t.to_state is BreakerState.CLOSED]
        since = max(closed_at) if closed_at else 0
        assert stats.calls <= min(20, started - since)
        if not closed_at:
            assert stats.calls >= min(20, warm_attempts)  # the warm-up calls count
        enough = stats.calls >= MIN_CALLS
    assert 0 <= stats.failures <= stats.calls
    if enough:
        assert stats.failure_rate == pytest.approx(stats.failures / stats.calls)
    else:
        assert stats.failure_rate is None
    if stats.state is BreakerState.OPEN:
        assert stats.retry_after is not None
        assert stats.retry_after <= OPEN_FOR
