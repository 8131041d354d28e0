"""Thousands of HTTP calls through the whole client stack, cancelled at random moments.

Each storm sends 2000 concurrent calls (GET, PUT, POST with and without an
Idempotency-Key) through one ResilientClient with a queueing bulkhead, a
breaker, retries and a stale-if-error cache to a real loopback server whose
paths answer healthy, slow, 5xx, reset or never. The plan of every call (what,
where, whether and when it is cancelled) comes from a seeded generator; the
breaker's clock is a ManualClock that a driver task moves during the storm,
so the breaker opens, half-opens and probes while calls are queued and in
flight. Afterwards every counter must add up, and nothing may be left held.
"""

from __future__ import annotations

import collections
import random
import ssl
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.to_thread
import httpx
import pytest

import seawall
from seawall import BreakerState, Transition
from seawall.testing import ManualClock, disable_waits
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

CALLS = 2000
SLOTS = 16
PROBES = 4
MIN_CALLS = 10
OPEN_FOR = 5.0  # ManualClock seconds
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


@dataclass(frozen=True, slots=True)
class Plan:
    """What one call does, drawn before the storm."""

    index: int
    method: str
    path: str
    cancel: Cancel
    after: float  # real seconds after arrival, for a cancelled call
    arrival: float  # real seconds after the storm starts


def make_plans(seed: int) -> list[Plan]:
    rng = random.Random(seed)
    paths = list(PATHS)
    weights = [share for _, share in PATHS.values()]
    return [
        Plan(
            index=i,
            method=rng.choice(METHODS),
            path=rng.choices(paths, weights)[0],
            cancel=rng.choices(CANCELS, [4, 3, 3])[0],
            after=rng.uniform(0.0, 0.3),
            arrival=rng.uniform(0.0, 1.0),
        )
        for i in range(CALLS)
    ]


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
        bulkhead=seawall.Bulkhead(max_concurrent=SLOTS, max_wait=0.15),
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


# httpx's request-body iterator is an async generator: when a cancellation lands while
# httpcore sends the body, trio warns as it collects it (encode/httpx#3686).
@pytest.mark.filterwarnings(
    "ignore:Async generator 'httpx._content.ByteStream.__aiter__' was garbage collected"
    ":ResourceWarning"
)
@pytest.mark.parametrize("seed", [pytest.param(5, id="seed-5"), pytest.param(1337, id="seed-1337")])
async def test_http_storm_with_random_cancellation_leaves_consistent_counters(seed: int) -> None:
    plans = make_plans(seed)
    clock = ManualClock()
    inner = CountingTransport(
        limits=httpx.Limits(max_connections=SLOTS, max_keepalive_connections=SLOTS),
        verify=_TLS,
    )
    tally: collections.Counter[str] = collections.Counter()  # what the callers got
    outcomes: collections.Counter[str] = collections.Counter()  # report.outcome of each
    escaped: list[BaseException] = []
    unreported: list[BaseException] = []  # errors out of a call without a CallReport
    transitions: list[tuple[Transition, int]] = []
    peak = {"waiting": 0, "in_use": 0, "probes": 0}
    scopes: dict[int, anyio.CancelScope] = {}
    kill_order = sorted(
        (p.arrival + p.after, p.index) for p in plans if p.cancel == "killer"
    )  # when the killer cancels each victim, seconds after the storm starts

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
            # Then the breaker opens: the storm begins against it, and the driver's
            # clock half-opens it while calls are queued and in flight.
            while breaker.state is BreakerState.CLOSED:
                assert (await client.get("/unavailable")).status_code == 200  # stale copy
            warm_attempts = inner.started

            async def call(plan: Plan) -> None:
                await anyio.sleep(plan.arrival)
                scope = anyio.CancelScope()
                if plan.cancel == "deadline":
                    scope.deadline = anyio.current_time() + plan.after
                scopes[plan.index] = scope
                outcome = "unset"
                with scope:
                    try:
                        response = await send(client, plan)
                    except (httpx.HTTPError, seawall.SeawallError) as exc:
                        outcome = type(exc).__name__
                        error_report = seawall.report_of(exc)
                        if error_report is None:
                            unreported.append(exc)
                        else:
                            outcomes[error_report.outcome] += 1
                    except Exception as exc:  # anything else escaped: a bug
                        escaped.append(exc)
                        outcome = "escaped"
                    else:
                        report = seawall.report_of(response)
                        assert report is not None
                        outcomes[report.outcome] += 1
                        outcome = (
                            f"fallback-{report.fallback}"
                            if report.fallback
                            else f"status-{response.status_code}"
                        )
                del scopes[plan.index]
                tally["cancelled" if scope.cancelled_caught else outcome] += 1

            async def killer() -> None:
                start = anyio.current_time()
                for at, index in kill_order:
                    await anyio.sleep_until(start + at)
                    victim = scopes.get(index)
                    if victim is not None:
                        victim.cancel()

            async def driver() -> None:
                """Moves the breaker's time (open -> half-open) and samples the figures."""
                await anyio.sleep(0.1)  # the first arrivals meet the open breaker
                while True:
                    await anyio.sleep(0.01)
                    clock.advance(OPEN_FOR / 4)
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
                    helpers.start_soon(killer)
                    async with anyio.create_task_group() as calls:
                        for plan in plans:
                            calls.start_soon(call, plan)
                    helpers.cancel_scope.cancel()

            # -- every call ended, and only in the expected ways
            assert not escaped, escaped
            assert not unreported, unreported
            assert sum(tally.values()) == CALLS, tally
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
            assert set(tally) <= allowed, tally
            print(
                f"storm seed={seed}: {dict(tally)} {dict(outcomes)} peak={peak} attempts={inner.started}"
            )
            # The storm really went through every part of the stack.
            for seen in ("cancelled", "status-200", "fallback-cache"):
                assert tally[seen] > 0, (seen, tally)
            assert outcomes["circuit_open"] > 0, outcomes
            # Whether a queued call also outwaits max_wait (bulkhead_full) depends
            # on the run's timing; that the bulkhead filled and queued does not.
            assert peak["waiting"] > 0, "the bulkhead never queued a call"
            assert peak["in_use"] == SLOTS
            states = [t.to_state for t, _ in transitions]
            assert BreakerState.HALF_OPEN in states, states
            assert any(t.reason.startswith("probes_") for t, _ in transitions), states

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
