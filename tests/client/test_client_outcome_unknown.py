"""OutcomeUnknownError: a non-idempotent request was sent and no answer came back."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import httpx
import pytest

import seawall
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

PolicyFactory = Callable[..., seawall.Policy]
ClientFactory = Callable[..., seawall.ResilientClient]


@pytest.mark.parametrize(
    ("fault", "timeouts", "cause"),
    [
        pytest.param(
            Fault.hang(),
            seawall.Timeouts(read=0.05, attempt=None),
            httpx.ReadTimeout,
            id="read-timeout",
        ),
        pytest.param(
            Fault.reset_connection(),
            seawall.Timeouts(),
            (httpx.ReadError, httpx.RemoteProtocolError),
            id="reset",
        ),
        pytest.param(
            Fault.truncated(),
            seawall.Timeouts(),
            httpx.RemoteProtocolError,
            id="truncated-body",
        ),
        pytest.param(
            # The attempt timeout must outlast connecting and sending on a loaded
            # machine (else the first attempt is cut unsent, and safely retried).
            Fault(body=b"x" * 100, body_delay=3.0),
            seawall.Timeouts(read=5.0, attempt=0.3),
            TimeoutError,
            id="attempt-timeout",
        ),
        pytest.param(
            Fault.hang(),
            seawall.Timeouts(read=5.0, attempt=None, total=0.1),
            seawall.DeadlineExceededError,
            id="total-deadline",
        ),
    ],
)
@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_sent_without_answer_raises_outcome_unknown(
    upstream: FaultyUpstream,
    policy: PolicyFactory,
    make_client: ClientFactory,
    method: str,
    fault: Fault,
    timeouts: seawall.Timeouts,
    cause: type[BaseException] | tuple[type[BaseException], ...],
) -> None:
    upstream.route("/charge", fault, Fault.ok())
    async with make_client(
        "payments", policy=policy(attempts=5, timeouts=timeouts), base_url=upstream.url
    ) as client:
        with pytest.raises(seawall.OutcomeUnknownError) as info:
            await client.request(method, "/charge", json={"cents": 100})
    error = info.value
    assert isinstance(error.__cause__, cause)
    assert error.request is not None
    assert error.request.method == method
    assert error.request.url == httpx.URL(upstream.url + "/charge")
    assert error.dependency == "payments"
    assert error.reason == "outcome_unknown"
    assert seawall.report_of(error) is error.report
    assert error.report is not None
    assert (error.report.outcome, error.report.attempts, error.report.retries) == (
        "outcome_unknown",
        1,
        (),
    )
    # Never retried: the server saw it exactly once.
    assert upstream.count("/charge") == 1


async def test_ambient_deadline_cutting_the_wait_is_outcome_unknown(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/charge", Fault.hang())
    async with make_client("payments", policy=policy(), base_url=upstream.url) as client:
        with seawall.deadline(0.1), pytest.raises(seawall.OutcomeUnknownError) as info:
            await client.post("/charge")
    assert isinstance(info.value.__cause__, seawall.DeadlineExceededError)
    assert upstream.count("/charge") == 1


async def test_with_an_idempotency_key_the_same_failure_is_retried_instead(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/charge", Fault.hang(), Fault(status=201))
    timeouts = seawall.Timeouts(read=0.05, attempt=None)
    async with make_client(
        "payments", policy=policy(timeouts=timeouts), base_url=upstream.url
    ) as client:
        response = await client.post("/charge", idempotency_key="charge-1")
    assert response.status_code == 201
    assert upstream.count("/charge", idempotency_key="charge-1") == 2


async def test_with_an_idempotency_key_exhausted_timeouts_are_an_unknown_outcome(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    # The key made the retry safe, but no attempt got an answer: the charge may
    # have gone through, so the caller must learn that, not a bare timeout.
    upstream.route("/charge", Fault.hang())
    timeouts = seawall.Timeouts(read=0.05, attempt=None)
    async with make_client(
        "payments", policy=policy(attempts=2, timeouts=timeouts), base_url=upstream.url
    ) as client:
        with pytest.raises(seawall.OutcomeUnknownError) as info:
            await client.post("/charge", idempotency_key="charge-1")
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)
    assert info.value.report is not None
    assert info.value.report.outcome == "outcome_unknown"
    assert info.value.report.attempts == 2
    assert upstream.count("/charge", idempotency_key="charge-1") == 2


async def test_with_an_idempotency_key_a_breaker_opening_after_a_send_is_not_a_rejection(
    upstream: FaultyUpstream, make_client: ClientFactory
) -> None:
    upstream.route("/charge", Fault.hang())
    policy = seawall.Policy(
        timeouts=seawall.Timeouts(attempt=0.05, total=2.0),
        retry=seawall.Retry(attempts=3, backoff=seawall.Backoff(initial=0, maximum=0), budget=None),
        breaker=seawall.CircuitBreaker(window_size=1, minimum_calls=1),
    )
    async with make_client("payments", policy=policy, base_url=upstream.url) as client:
        with pytest.raises(seawall.OutcomeUnknownError) as info:
            await client.post("/charge", idempotency_key="charge-2")
    assert isinstance(info.value.__cause__, seawall.CircuitOpenError)
    assert upstream.count("/charge", idempotency_key="charge-2") == 1


async def test_an_attempt_cut_is_an_httpx_read_timeout_and_a_timeout_error(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/item", Fault.hang())
    timeouts = seawall.Timeouts(read=5.0, attempt=0.05)
    async with make_client(
        "items", policy=policy(attempts=1, timeouts=timeouts), base_url=upstream.url
    ) as client:
        with pytest.raises(httpx.ReadTimeout) as info:
            await client.get("/item")
    assert isinstance(info.value, TimeoutError)
    report = seawall.report_of(info.value)
    assert report is not None
    assert report.outcome == "timeout"


async def test_idempotent_method_deadline_raises_deadline_exceeded_not_outcome_unknown(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/item", Fault.hang())
    timeouts = seawall.Timeouts(read=5.0, attempt=None, total=0.1)
    async with make_client(
        "items", policy=policy(timeouts=timeouts), base_url=upstream.url
    ) as client:
        with pytest.raises(seawall.DeadlineExceededError) as info:
            await client.put("/item", content=b"v")
    assert not isinstance(info.value, seawall.OutcomeUnknownError)
    assert info.value.report is not None
    assert info.value.report.outcome == "deadline_exceeded"


async def test_outcome_unknown_gets_no_fallback(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/charge", Fault.reset_connection())
    fallback = seawall.Fallback(default=httpx.Response(200, text="made up"))
    async with make_client(
        "payments", policy=policy(fallback=fallback), base_url=upstream.url
    ) as client:
        with pytest.raises(seawall.OutcomeUnknownError) as info:
            await client.post("/charge")
    assert info.value.report is not None
    assert info.value.report.fallback is None


# -- cut before anything left: not an unknown outcome ----------------------------------


async def test_deadline_while_waiting_for_a_pool_connection_is_not_outcome_unknown(
    upstream: FaultyUpstream,
    policy: PolicyFactory,
    make_client: ClientFactory,
    until: Callable[..., object],
) -> None:
    upstream.route("/hold", Fault.hang())
    p = policy(
        timeouts=seawall.Timeouts(read=5.0, pool=5.0, attempt=None),
        pool=seawall.Pool(max_connections=1, max_keepalive=1),
    )
    async with (
        make_client("payments", policy=p, base_url=upstream.url) as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(client.get, "/hold")  # holds the only connection
        await until(lambda: upstream.count("/hold") == 1)  # type: ignore[operator]
        with seawall.deadline(0.1), pytest.raises(seawall.DeadlineExceededError) as info:
            await client.post("/charge", content=b"x")
        tg.cancel_scope.cancel()
    assert not isinstance(info.value, seawall.OutcomeUnknownError)
    assert info.value.report is not None
    assert info.value.report.outcome == "deadline_exceeded"
    assert upstream.count("/charge") == 0


@pytest.mark.parametrize(
    ("timeouts", "error", "attempts"),
    [
        pytest.param(
            seawall.Timeouts(connect=5.0, attempt=0.05, total=None),
            TimeoutError,
            2,
            id="attempt-timeout-retried",
        ),
        pytest.param(
            seawall.Timeouts(connect=5.0, attempt=None, total=0.1),
            seawall.DeadlineExceededError,
            1,
            id="deadline",
        ),
    ],
)
async def test_cut_during_the_tcp_handshake_is_not_outcome_unknown(
    policy: PolicyFactory,
    make_client: ClientFactory,
    timeouts: seawall.Timeouts,
    error: type[Exception],
    attempts: int,
) -> None:
    with FaultyUpstream.unaccepted_listener() as port:
        async with make_client(
            "payments",
            policy=policy(attempts=2, timeouts=timeouts),
            base_url=f"http://127.0.0.1:{port}",
        ) as client:
            with pytest.raises(error) as info:
                await client.post("/charge", content=b"x")
    assert not isinstance(info.value, seawall.OutcomeUnknownError)
    report = seawall.report_of(info.value)
    assert report is not None
    assert report.attempts == attempts
    assert report.outcome != "outcome_unknown"


async def test_the_callers_trace_hook_still_sees_every_event(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    events: list[str] = []

    async def trace(name: str, info: dict[str, object]) -> None:
        events.append(name)

    timeouts = seawall.Timeouts(total=5.0)
    async with make_client(
        "payments", policy=policy(timeouts=timeouts), base_url=upstream.url
    ) as client:
        response = await client.post("/charge", extensions={"trace": trace})
    assert response.status_code == 200
    assert "http11.send_request_headers.started" in events
    assert "http11.receive_response_headers.complete" in events
    assert response.request.extensions["trace"] is trace
