"""The chaos matrix: every fault x every kind of request x every policy, against a real server.

160 cells (10 faults x 4 requests x 4 policies). Each cell is checked against
``expected()``, an oracle written from the retry contract (not from the
transport's code):

* a connect failure (nothing was sent) is retried for any method;
* after the request may have reached the server (read timeout, reset, cut or
  invalid answer, retryable status) it is retried only for GET, HEAD, OPTIONS,
  PUT, DELETE, TRACE or a request with an Idempotency-Key; a 429 (refused
  unprocessed) is retried for any method;
* a retryable status that is not retried again ends with the last response
  (``retry_exhausted`` once a retry ran, ``http_error`` otherwise); a transport
  error ends with that httpx error; a POST without key that was sent and got no
  answer ends with ``OutcomeUnknownError`` and is never resent; so does a POST
  with a key whose retries got no answer either (docs/client.md);
* 5xx, timeouts and transport errors count as breaker failures: a breaker that
  opens after two of them refuses the third attempt: the last response is the
  answer to a retryable status, ``CircuitOpenError`` ends a transport error;
  ``report.retries`` lists the refused retry too (the CallReport docstring);
* with ``Fallback(stale_if_error=...)`` a GET that fails for any reason gets the
  last good response (``fallback == "cache"``, the outcome keeps the failure);
  other methods never get a cached answer.

Every cell then checks that nothing leaked: no bulkhead slot, no half-open
permit, no active pooled connection, and the server saw every connection close.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

import anyio
import anyio.to_thread
import httpx
import pytest

import seawall
from seawall.testing import ManualClock, disable_waits
from seawall.testing._upstream import Fault, FaultyUpstream

# -- the contract's vocabulary ----------------------------------------------------

#: Methods the contract lets seawall resend after the request may have arrived.
RESENDABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

READ_TIMEOUT = 0.15
TIMEOUTS = seawall.Timeouts(
    connect=0.5, read=READ_TIMEOUT, write=0.5, pool=0.5, attempt=0.4, total=2.0
)
ATTEMPTS = 3
#: docs/client.md ("Outcome codes"): a request with an Idempotency-Key but a
#: non-idempotent method whose attempts were sent and all went unanswered ends in
#: OutcomeUnknownError, not in the last httpx error, whatever stopped the retries.
KEYED_UNANSWERED_IS_UNKNOWN = True
#: The breaker of the "retry plus breaker" policy opens on the second failure.
BREAKER_OPENS_AFTER = 2
BODY = {"sku": "chaos", "qty": 1}
# One TLS context for every client (building one costs ~30 ms; the servers are plain HTTP).
_TLS = ssl.create_default_context()


@dataclass(frozen=True)
class FaultCase:
    """One way the upstream misbehaves, and what the contract calls it."""

    name: str
    #: What the server does; None: nothing listens (connection refused).
    fault: Fault | None
    #: ``refused``: never sent; ``unanswered``: sent, no complete answer; ``status``: an answer.
    kind: Literal["refused", "unanswered", "status"]
    status: int | None = None
    #: The httpx error one failed attempt raises (not for ``status``).
    error: type[httpx.HTTPError] | None = None
    #: The outcome code of one failed attempt (not for ``status``).
    outcome: str | None = None


FAULTS = [
    # Delays are far longer than the read timeout: the client gives up first.
    FaultCase("delay-headers", Fault.latency(1.0), "unanswered", None, httpx.ReadTimeout, "timeout"),
    FaultCase("delay-body", Fault.slow_body(1.0), "unanswered", None, httpx.ReadTimeout, "timeout"),
    FaultCase("500", Fault.error(500), "status", 500),
    # Retry-After of 1 s, well under max_retry_after (and under the time left).
    FaultCase("503-retry-after", Fault.error(503, retry_after=1), "status", 503),
    FaultCase("429", Fault.error(429), "status", 429),
    FaultCase("reset", Fault.reset_connection(), "unanswered", None, httpx.ReadError, "transport_error"),
    FaultCase("refused", None, "refused", None, httpx.ConnectError, "connect_error"),
    FaultCase("blackhole", Fault.hang(), "unanswered", None, httpx.ReadTimeout, "timeout"),
    FaultCase("truncated", Fault.truncated(), "unanswered", None, httpx.RemoteProtocolError, "transport_error"),
    FaultCase("invalid-http", Fault.garbage(), "unanswered", None, httpx.RemoteProtocolError, "transport_error"),
]  # fmt: skip


@dataclass(frozen=True)
class RequestCase:
    name: str
    method: str
    with_key: bool

    @property
    def resendable(self) -> bool:
        """May it be sent again after it may have reached the server?"""
        return self.method in RESENDABLE_METHODS or self.with_key


REQUESTS = [
    RequestCase("GET", "GET", with_key=False),
    RequestCase("PUT", "PUT", with_key=False),
    RequestCase("POST-nokey", "POST", with_key=False),
    RequestCase("POST-key", "POST", with_key=True),
]


@dataclass(frozen=True)
class PolicyCase:
    name: str
    retry: bool
    breaker: bool
    fallback: bool

    def build(self) -> seawall.Policy:
        return seawall.Policy(
            timeouts=TIMEOUTS,
            retry=seawall.Retry(
                attempts=ATTEMPTS,
                backoff=seawall.Backoff(initial=0.0, maximum=0.0, jitter=False),
                budget=None,
            )
            if self.retry
            else None,
            breaker=seawall.CircuitBreaker(
                window="count",
                window_size=BREAKER_OPENS_AFTER,
                minimum_calls=BREAKER_OPENS_AFTER,
                failure_rate_threshold=1.0,
                open_duration=30.0,
            )
            if self.breaker
            else None,
            bulkhead=seawall.Bulkhead(max_concurrent=4),
            fallback=seawall.Fallback(stale_if_error=60.0) if self.fallback else None,
        )


POLICIES = [
    PolicyCase("no-retry", retry=False, breaker=False, fallback=False),
    PolicyCase("retry", retry=True, breaker=False, fallback=False),
    PolicyCase("retry-breaker", retry=True, breaker=True, fallback=False),
    PolicyCase("fallback", retry=True, breaker=False, fallback=True),
]


# -- the oracle ---------------------------------------------------------------------

UNCHECKED: Any = object()


@dataclass(frozen=True)
class Expected:
    outcome: str
    #: Requests the upstream receives for the call (warm-up excluded).
    seen: int
    #: Attempts that ran (refused ones included).
    attempts: int
    #: Retries decided: ``len(report.retries)``.
    retries: int
    #: The response status the caller gets, or None when an error is raised.
    status: int | None
    #: The error type the caller gets (exactly), or None for a response.
    error: type[BaseException] | None
    #: The type of the error's ``__cause__``, for seawall's own errors.
    cause: type[BaseException] | None
    fallback: str | None
    #: Breaker state after the call ("open"/"closed"); None without a breaker.
    breaker_state: str | None
    retry_stopped: Any = UNCHECKED


def _wants_retry(fault: FaultCase, request: RequestCase) -> bool:
    if fault.kind == "refused" or fault.status == 429:
        return True  # never sent, or refused unprocessed: any method
    return request.resendable


def _breaker_failure(fault: FaultCase) -> bool:
    """5xx, timeouts and transport errors are breaker failures; a 429 is not."""
    return fault.kind != "status" or (fault.status or 0) >= 500


def _refused_by_breaker(fault: FaultCase, request: RequestCase, policy: PolicyCase) -> bool:
    """Does the breaker open before the retries run out, and refuse the next attempt?"""
    if fault.kind == "unanswered" and not request.resendable:
        return False
    attempts = ATTEMPTS if policy.retry and _wants_retry(fault, request) else 1
    return policy.breaker and _breaker_failure(fault) and attempts > BREAKER_OPENS_AFTER


def expected(fault: FaultCase, request: RequestCase, policy: PolicyCase) -> Expected:
    """What the contract says the caller, the report and the upstream see."""
    allowed = ATTEMPTS if policy.retry else 1

    if fault.kind == "unanswered" and not request.resendable:
        # Sent, no answer, not safe to resend: the upstream may have acted on it.
        return Expected(
            outcome="outcome_unknown",
            seen=1,
            attempts=1,
            retries=0,
            status=None,
            error=seawall.OutcomeUnknownError,
            cause=fault.error,
            fallback=None,
            breaker_state="closed" if policy.breaker else None,  # one failure of two
        )

    wants_retry = _wants_retry(fault, request)
    attempts = allowed if wants_retry else 1
    breaker_failure = _breaker_failure(fault)
    refused_by_breaker = _refused_by_breaker(fault, request, policy)
    if refused_by_breaker:
        attempts = BREAKER_OPENS_AFTER
    failures = attempts if breaker_failure else 0
    breaker_state = None
    if policy.breaker:
        breaker_state = "open" if failures >= BREAKER_OPENS_AFTER else "closed"
    retried = attempts > 1
    seen = 0 if fault.kind == "refused" else attempts

    status: int | None
    error: type[BaseException] | None
    cause: type[BaseException] | None = None
    retry_stopped: Any = UNCHECKED
    if fault.kind == "status":
        # An answer: the last one is the call's result, whoever stopped the retries.
        outcome = "retry_exhausted" if retried else "http_error"
        status, error = fault.status, None
        if policy.retry and not wants_retry:
            retry_stopped = "not_idempotent"
        elif policy.retry and not refused_by_breaker:
            retry_stopped = None
    elif refused_by_breaker:
        outcome = "circuit_open"
        status, error, cause = None, seawall.CircuitOpenError, fault.error
    else:
        assert fault.outcome is not None
        outcome = "retry_exhausted" if retried else fault.outcome
        status, error = None, fault.error
        retry_stopped = None
    if (
        KEYED_UNANSWERED_IS_UNKNOWN
        and fault.kind == "unanswered"
        and request.method not in RESENDABLE_METHODS
    ):
        # A keyed POST was sent, and neither it nor its retries got an answer:
        # whatever ended the call, the upstream may have acted on it.
        outcome, error = "outcome_unknown", seawall.OutcomeUnknownError
        cause = seawall.CircuitOpenError if refused_by_breaker else fault.error

    fallback = None
    if policy.fallback and request.method == "GET":
        # Any failure of a GET: the pre-warmed response, the outcome kept.
        fallback, status, error, cause = "cache", 200, None, None
    return Expected(
        outcome=outcome,
        seen=seen,
        attempts=attempts,
        # Every retry decided is listed, one then refused by the open breaker too.
        retries=attempts - 1 + int(refused_by_breaker),
        status=status,
        error=error,
        cause=cause,
        fallback=fallback,
        breaker_state=breaker_state,
        retry_stopped=retry_stopped,
    )


def _cells() -> Iterator[Any]:
    for fault in FAULTS:
        for request in REQUESTS:
            for policy in POLICIES:
                cell_id = f"{fault.name}-{request.name}-{policy.name}"
                yield pytest.param(fault, request, policy, id=cell_id)


CELLS = list(_cells())
assert len(CELLS) == 160


# -- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[FaultyUpstream]:
    """One server for the whole matrix; each cell has a path of its own."""
    with FaultyUpstream() as server:
        yield server


async def _send(
    client: seawall.ResilientClient, request: RequestCase, path: str, key: str | None
) -> httpx.Response:
    if request.method == "GET":
        return await client.get(path)
    if request.method == "PUT":
        return await client.put(path, json=BODY)
    return await client.post(path, json=BODY, idempotency_key=key if request.with_key else None)


def test_matrix_has_every_cell_once() -> None:
    ids = [p.id for p in CELLS]
    assert len(set(ids)) == len(FAULTS) * len(REQUESTS) * len(POLICIES) == 160


def test_oracle_spot_checks() -> None:
    """A few cells worked out by hand, so a slip in the oracle cannot hide a bug."""
    by_name = {f.name: f for f in FAULTS}
    req = {r.name: r for r in REQUESTS}
    pol = {p.name: p for p in POLICIES}
    post_timeout = expected(by_name["blackhole"], req["POST-nokey"], pol["retry"])
    assert (post_timeout.outcome, post_timeout.seen, post_timeout.error) == (
        "outcome_unknown",
        1,
        seawall.OutcomeUnknownError,
    )
    refused = expected(by_name["refused"], req["POST-nokey"], pol["retry"])
    assert (refused.outcome, refused.seen, refused.attempts) == ("retry_exhausted", 0, 3)
    post_429 = expected(by_name["429"], req["POST-nokey"], pol["retry-breaker"])
    assert (post_429.status, post_429.seen, post_429.breaker_state) == (429, 3, "closed")
    put_500 = expected(by_name["500"], req["PUT"], pol["retry-breaker"])
    assert (put_500.outcome, put_500.seen, put_500.breaker_state) == ("retry_exhausted", 2, "open")
    keyed = expected(by_name["reset"], req["POST-key"], pol["retry-breaker"])
    assert (keyed.error, keyed.cause, keyed.seen, keyed.retries) == (
        seawall.OutcomeUnknownError,
        seawall.CircuitOpenError,
        2,
        2,
    )
    get_reset = expected(by_name["reset"], req["GET"], pol["fallback"])
    assert (get_reset.status, get_reset.fallback, get_reset.outcome) == (
        200,
        "cache",
        "retry_exhausted",
    )


# -- the matrix ----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize(("fault", "request_case", "policy"), CELLS)
async def test_chaos_cell(
    upstream: FaultyUpstream,
    fault: FaultCase,
    request_case: RequestCase,
    policy: PolicyCase,
) -> None:
    want = expected(fault, request_case, policy)
    path = f"/{fault.name}/{request_case.name}/{policy.name}"
    key = f"key-{fault.name}-{policy.name}" if request_case.with_key else None
    warm_up = policy.fallback  # every fallback cell warms the cache with a GET first
    temporary: FaultyUpstream | None = None
    if fault.fault is not None:
        base_url = upstream.url
        if warm_up:
            upstream.route(path, Fault.ok(), fault.fault)
        else:
            upstream.route(path, fault.fault)
    elif warm_up:
        # A server that answers the warm-up, then goes away: its port refuses.
        temporary = FaultyUpstream().start()
        base_url = temporary.url
    else:
        base_url = f"http://127.0.0.1:{FaultyUpstream.refused_port()}"

    result: httpx.Response | None = None
    caught: Exception | None = None
    warm_body: bytes | None = None
    with disable_waits(), anyio.fail_after(10):
        async with seawall.ResilientClient(
            "chaos", policy=policy.build(), base_url=base_url, verify=_TLS
        ) as client:
            if warm_up:
                warm = await client.get(path, headers={"Connection": "close"})
                assert warm.status_code == 200
                warm_body = warm.content
                if temporary is not None:
                    await anyio.to_thread.run_sync(temporary.stop)
            try:
                result = await _send(client, request_case, path, key)
            except Exception as exc:
                caught = exc
            if result is not None:
                await result.aread()
            pool = client.resilient_transport.pool_statistics()
            bulkhead = client.bulkhead.statistics()
            breaker = client.breaker.statistics() if policy.breaker else None
        closed = await anyio.to_thread.run_sync(upstream.wait_for_open_connections, 0)

    report = seawall.report_of(result if result is not None else caught)
    assert report is not None, f"no CallReport on {result or caught!r}"
    got = Expected(
        outcome=report.outcome,
        seen=(temporary or upstream).count(path) - int(warm_up),
        attempts=report.attempts,
        retries=len(report.retries),
        status=result.status_code if result is not None else None,
        error=type(caught) if caught is not None else None,
        cause=type(caught.__cause__)
        if isinstance(caught, seawall.SeawallError) and caught.__cause__ is not None
        else None,
        fallback=report.fallback,
        breaker_state=breaker.state.value if breaker is not None else None,
        retry_stopped=report.retry_stopped if want.retry_stopped is not UNCHECKED else UNCHECKED,
    )
    assert got == want, f"caught={caught!r}\nreport={report!r}"

    if want.fallback == "cache":
        assert result is not None
        assert result.content == warm_body
    if key is not None:
        # Every attempt carried the same key.
        assert (temporary or upstream).count(path, idempotency_key=key) == want.seen
    if request_case.method == "POST" and not request_case.with_key and fault.kind != "status":
        assert got.seen <= 1, "a POST without key was sent more than once"

    # Nothing leaked.
    assert bulkhead.in_use == 0
    assert bulkhead.waiting == 0
    if breaker is not None:
        assert breaker.half_open_permits_in_use == 0
    assert pool["in_flight"] == 0
    assert pool.get("connections", 0) == pool.get("idle", 0), pool
    assert closed, f"{upstream.open_connections} server-side connections still open"


# -- Retry-After, beyond the matrix ------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("status", [503, 429])
@pytest.mark.parametrize("request_case", REQUESTS, ids=lambda r: r.name)
async def test_retry_after_longer_than_max_retry_after_returns_the_response(
    upstream: FaultyUpstream, request_case: RequestCase, status: int
) -> None:
    path = f"/retry-after-too-long/{status}/{request_case.name}"
    upstream.route(path, Fault.error(status, retry_after=120), Fault.ok())
    policy = replace(POLICIES[1].build(), retry=seawall.Retry(attempts=3, max_retry_after=5.0))
    async with seawall.ResilientClient(
        "chaos", policy=policy, base_url=upstream.url, verify=_TLS
    ) as client:
        with anyio.fail_after(5):
            response = await _send(client, request_case, path, "key-too-long")
    report = seawall.report_of(response)
    assert report is not None
    wanted_retry = status == 429 or request_case.resendable
    assert (response.status_code, report.outcome, report.attempts, upstream.count(path)) == (
        status,
        "http_error",
        1,
        1,
    )
    assert report.retry_stopped == ("retry_after_too_long" if wanted_retry else "not_idempotent")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize(
    ("request_case", "status"),
    [(r, 503) for r in REQUESTS if r.resendable] + [(REQUESTS[2], 429)],
    ids=lambda v: v.name if isinstance(v, RequestCase) else str(v),
)
async def test_retry_after_sets_the_wait(
    upstream: FaultyUpstream, request_case: RequestCase, status: int
) -> None:
    path = f"/retry-after-wait/{status}/{request_case.name}"
    upstream.route(path, Fault.error(status, retry_after=2))
    clock = ManualClock()
    policy = replace(POLICIES[1].build(), timeouts=replace(TIMEOUTS, total=None))
    async with seawall.ResilientClient(
        "chaos", policy=policy, base_url=upstream.url, verify=_TLS, clock=clock
    ) as client:
        with anyio.fail_after(5):
            response = await _send(client, request_case, path, "key-wait")
    report = seawall.report_of(response)
    assert report is not None
    assert (response.status_code, report.outcome, upstream.count(path)) == (
        status,
        "retry_exhausted",
        ATTEMPTS,
    )
    # The server's Retry-After, not the (zero) backoff, set each wait.
    assert clock.slept == [2.0] * (ATTEMPTS - 1)
