"""seawall.httpx2 beside httpx, in one process, with no alias: what an app on
httpx2 gets is httpx2 objects all the way through, over the same engine.

(The whole client suite also runs under httpx2: scripts/pytest_httpx2.py.)
"""

from __future__ import annotations

import anyio
import httpx
import httpx2
import pytest

import seawall
import seawall.httpx2
from seawall import OutcomeUnknownError, Policy, Retry, Timeouts
from seawall.testing import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

NO_WAIT = seawall.Backoff(initial=0.0, maximum=0.0, jitter=False)


def client(upstream: FaultyUpstream, **parts: object) -> seawall.httpx2.ResilientClient:
    parts.setdefault("retry", Retry(attempts=3, backoff=NO_WAIT, budget=None))
    parts.setdefault("breaker", None)
    policy = Policy(**parts)  # type: ignore[arg-type]
    return seawall.httpx2.ResilientClient("h2", policy=policy, base_url=upstream.url)


def test_the_classes_are_httpx2s() -> None:
    assert issubclass(seawall.httpx2.ResilientClient, httpx2.AsyncClient)
    assert issubclass(seawall.httpx2.ResilientTransport, httpx2.AsyncBaseTransport)
    assert not issubclass(seawall.httpx2.ResilientClient, httpx.AsyncClient)
    assert issubclass(seawall.httpx2.AttemptTimeout, httpx2.ReadTimeout)
    assert issubclass(seawall.httpx2.AttemptTimeout, TimeoutError)


async def test_a_retried_503_then_an_answer(upstream: FaultyUpstream) -> None:
    upstream.route("/x", Fault.error(503), Fault.ok())
    async with client(upstream) as c:
        response = await c.get("/x")
    assert isinstance(response, httpx2.Response)
    assert response.status_code == 200
    report = seawall.report_of(response)
    assert report is not None
    assert report.retries == ("status_503",)
    assert upstream.count("/x") == 2


async def test_errors_are_httpx2_errors(upstream: FaultyUpstream) -> None:
    refused = f"http://127.0.0.1:{FaultyUpstream.refused_port()}"
    async with seawall.httpx2.ResilientClient(
        "h2", policy=Policy(retry=None, breaker=None), base_url=refused
    ) as c:
        with pytest.raises(httpx2.ConnectError) as info:
            await c.get("/")
    assert seawall.report_of(info.value) is not None


async def test_an_attempt_timeout_is_httpx2s_read_timeout(upstream: FaultyUpstream) -> None:
    upstream.route("/hang", Fault.hang())
    async with client(upstream, timeouts=Timeouts(attempt=0.2, total=5.0)) as c:
        with anyio.fail_after(5), pytest.raises(httpx2.ReadTimeout) as info:
            await c.get("/hang")
    assert isinstance(info.value, seawall.httpx2.AttemptTimeout)
    assert upstream.count("/hang") == 3


async def test_a_keyless_post_reset_is_sent_once_and_unknown(upstream: FaultyUpstream) -> None:
    upstream.route("/pay", Fault.reset_connection())
    async with client(upstream) as c:
        with pytest.raises(OutcomeUnknownError):
            await c.post("/pay", json={"amount": 1})
    assert upstream.count("/pay") == 1


async def test_the_fallback_cache_answers_with_an_httpx2_response(upstream: FaultyUpstream) -> None:
    upstream.route("/menu", Fault(body=b"soup"), Fault.error(503))
    async with client(upstream, retry=None, fallback=seawall.Fallback(stale_if_error=60.0)) as c:
        assert (await c.get("/menu")).content == b"soup"
        stale = await c.get("/menu")
    assert isinstance(stale, httpx2.Response)
    assert stale.content == b"soup"
    report = seawall.report_of(stale)
    assert report is not None
    assert report.fallback == "cache"


async def test_a_stream_holds_its_slot_until_closed(upstream: FaultyUpstream) -> None:
    upstream.route("/big", Fault(body=b"x" * 10_000))
    async with client(upstream, bulkhead=seawall.Bulkhead(max_concurrent=1, max_wait=0)) as c:
        async with c.stream("GET", "/big") as response:
            assert c.bulkhead.statistics().in_use == 1
            body = b"".join([chunk async for chunk in response.aiter_bytes()])
        assert c.bulkhead.statistics().in_use == 0
    assert body == b"x" * 10_000


async def test_the_registry_builds_an_httpx2_twin_over_the_same_runtime(
    upstream: FaultyUpstream,
) -> None:
    upstream.route("/x", Fault.error(503), Fault.ok())
    registry = seawall.Registry()
    registry.add("dep", base_url=upstream.url)
    async with registry:
        twin = registry.httpx2_client("dep")
        assert isinstance(twin, seawall.httpx2.ResilientClient)
        assert registry.httpx2_client("dep") is twin
        assert twin.breaker is registry.breaker("dep")  # one breaker for both clients
        response = await twin.get("/x")
    assert response.status_code == 200
    report = seawall.report_of(response)
    assert report is not None
    assert report.retries == ("status_503",)


async def test_testing_helpers_and_redaction_know_httpx2(upstream: FaultyUpstream) -> None:
    from seawall.telemetry._redact import redact_url
    from seawall.testing import force_closed, force_open

    async with client(upstream, breaker=seawall.CircuitBreaker()) as c:
        force_open(c)
        with pytest.raises(seawall.CircuitOpenError):
            await c.get("/")
        force_closed(c)
        assert (await c.get("/")).status_code == 200
    url = httpx2.URL("http://user:pw@example.com/a?token=t")
    assert redact_url(url) == "http://example.com/a?token=REDACTED"


def test_report_of_reads_a_report_on_an_errors_headers() -> None:
    report = seawall.CallReport(dependency="x", outcome="http_error", attempts=1)

    class Headers(dict[str, str]):
        def __init__(self) -> None:
            super().__init__()
            self.report = report

    class SdkError(Exception):
        headers = Headers()

    assert seawall.report_of(SdkError()) is report
