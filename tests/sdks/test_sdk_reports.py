"""The CallReport, reached the way docs/sdks.md says for each SDK; seawall.stripe's details."""

from __future__ import annotations

import anthropic
import githubkit
import httpx
import openai
import pytest
import stripe
from githubkit.exception import RequestFailed
from sdk_support import MESSAGES, STRIPE_503, policy

import seawall
import seawall.httpx2
from seawall.stripe import ResponseHeaders, StripeHTTPClient, stripe_client
from seawall.testing import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}
OPENAI_MODELS = Fault(headers=JSON, body=b'{"object": "list", "data": []}')
ANTHROPIC_MODELS = Fault(
    headers=JSON, body=b'{"data": [], "has_more": false, "first_id": null, "last_id": null}'
)
CUSTOMER = Fault(
    headers={**JSON, "request-id": "req_1"},
    body=b'{"id": "cus_1", "object": "customer", "email": "ada@example.com"}',
)


async def test_openai(api: FaultyUpstream, dependency: str) -> None:
    async with seawall.httpx2.ResilientClient(dependency, policy=policy()) as http:
        client = openai.AsyncOpenAI(
            api_key="sk-test", base_url=f"{api.url}/v1", http_client=http, max_retries=0
        )
        api.route("/v1/models", OPENAI_MODELS)
        raw = await client.models.with_raw_response.list()
        report = seawall.report_of(raw.http_response)
        assert report is not None
        assert (report.outcome, report.method, report.dependency) == ("success", "GET", dependency)
        assert raw.parse().data == []

        api.route("/v1/models", Fault.error(503))
        with pytest.raises(openai.InternalServerError) as status_error:
            await client.models.list()
        assert status_error.value.response.status_code == 503
        report = seawall.report_of(status_error.value)  # through exc.response
        assert report is not None
        assert report.attempts == 3

        api.route("/v1/chat/completions", Fault.reset_connection())
        # seawall's own errors pass through openai unwrapped.
        with pytest.raises(seawall.OutcomeUnknownError) as unknown:
            await client.chat.completions.create(model="m", messages=MESSAGES)
        assert seawall.report_of(unknown.value) is unknown.value.report


async def test_anthropic(api: FaultyUpstream, dependency: str) -> None:
    async with seawall.httpx2.ResilientClient(dependency, policy=policy()) as http:
        client = anthropic.AsyncAnthropic(
            api_key="sk-ant-test", base_url=api.url, http_client=http, max_retries=0
        )
        api.route("/v1/models", ANTHROPIC_MODELS)
        raw = await client.models.with_raw_response.list()
        report = seawall.report_of(raw.http_response)
        assert report is not None
        assert report.outcome == "success"

        api.route("/v1/models", Fault.error(503))
        with pytest.raises(anthropic.APIStatusError) as status_error:
            await client.models.list()
        report = seawall.report_of(status_error.value)
        assert report is not None
        assert report.attempts == 3

        api.route("/v1/messages", Fault.reset_connection())
        # anthropic wraps every other error in APIConnectionError, seawall's as __cause__.
        with pytest.raises(anthropic.APIConnectionError) as wrapped:
            await client.messages.create(model="m", max_tokens=8, messages=MESSAGES)
        assert isinstance(wrapped.value.__cause__, seawall.OutcomeUnknownError)
        report = seawall.report_of(wrapped.value)
        assert report is not None
        assert report.outcome == "outcome_unknown"


async def test_stripe(api: FaultyUpstream, dependency: str) -> None:
    async with seawall.ResilientClient(dependency, policy=policy()) as http:
        client = stripe_client("sk_test_x", http, base_addresses={"api": api.url})
        api.route("/v1/customers", CUSTOMER)
        customer = await client.v1.customers.create_async({"email": "ada@example.com"})
        assert customer.id == "cus_1"
        assert customer.last_response is not None
        assert customer.last_response.request_id == "req_1"
        report = seawall.report_of(customer.last_response.headers)
        assert report is not None
        assert (report.outcome, report.method) == ("success", "POST")

        # An API error keeps the headers only: the report rides on them.
        api.route("/v1/customers", STRIPE_503)
        with pytest.raises(stripe.APIError) as api_error:
            await client.v1.customers.create_async({"email": "ada@example.com"})
        assert api_error.value.http_status == 503
        assert api_error.value.request_id == "req_503"
        # stripe keeps no response, but report_of also reads an error's headers.
        assert seawall.report_of(api_error.value) is seawall.report_of(api_error.value.headers)
        report = seawall.report_of(api_error.value.headers)
        assert report is not None
        assert (report.attempts, report.outcome) == (3, "retry_exhausted")

        # seawall's errors become APIConnectionError, never retried by stripe.
        api.route("/v1/customers/cus_1", Fault.reset_connection())
        with pytest.raises(stripe.APIConnectionError) as connection_error:
            await client.v1.customers.retrieve_async("cus_1")
        assert connection_error.value.should_retry is False
        assert isinstance(connection_error.value.__cause__, httpx.ReadError)
        report = seawall.report_of(connection_error.value)
        assert report is not None
        assert report.outcome == "retry_exhausted"


async def test_githubkit(api: FaultyUpstream, dependency: str) -> None:
    transport = seawall.ResilientTransport(dependency, policy())
    github = githubkit.GitHub(
        "ghp_test",
        base_url=api.url,
        async_transport=transport,
        http_cache=False,
        auto_retry=False,
    )
    async with github:
        api.route("/zen", Fault(body=b"Keep it logically awesome."))
        response = await github.rest.meta.async_get_zen()
        assert response.text == "Keep it logically awesome."
        report = seawall.report_of(response)  # through response.raw_response
        assert report is not None
        assert report.outcome == "success"

        api.route("/zen", Fault.error(503))
        with pytest.raises(RequestFailed) as failed:
            await github.rest.meta.async_get_zen()
        assert failed.value.response.status_code == 503
        report = seawall.report_of(failed.value)  # exc.response.raw_response
        assert report is not None
        assert report.attempts == 3

        api.route("/markdown", Fault.reset_connection())
        with pytest.raises(githubkit.exception.RequestError) as request_error:
            await github.rest.markdown.async_render(text="hi")
        assert isinstance(request_error.value.exc, seawall.OutcomeUnknownError)
        report = seawall.report_of(request_error.value)
        assert report is not None
        assert report.outcome == "outcome_unknown"
    await transport.aclose()


# asyncio only: githubkit's default cache storage is process-wide, and its lock,
# once used under asyncio, fails under trio ("no running event loop").
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_githubkit_cache_in_front_hides_the_report_and_blocks_retries(
    api: FaultyUpstream, dependency: str, anyio_backend: str
) -> None:
    """Why the recipe says http_cache=False: githubkit's cache sits in front of seawall."""
    transport = seawall.ResilientTransport(dependency, policy())
    github = githubkit.GitHub(
        "ghp_test", base_url=api.url, async_transport=transport, auto_retry=False
    )
    api.route("/markdown", Fault.error(503))
    with pytest.raises(RequestFailed) as failed:
        await github.rest.markdown.async_render(text="hi", headers={"Idempotency-Key": "k"})
    await transport.aclose()
    # The cache rebuilt the request (its body is no longer replayable) and the
    # response (seawall's report is gone): a keyed POST was sent once.
    assert api.count("/markdown") == 1
    assert seawall.report_of(failed.value) is None


# -- seawall.stripe in detail ------------------------------------------------------------


async def test_stripe_streams_through_the_client(api: FaultyUpstream, dependency: str) -> None:
    pdf = b"%PDF-1.4 " + b"x" * 100_000
    async with seawall.ResilientClient(dependency, policy=policy()) as http:
        client = stripe_client("sk_test_x", http, base_addresses={"api": api.url, "files": api.url})
        api.route(
            "/v1/quotes/qt_1/pdf", Fault(headers={"content-type": "application/pdf"}, body=pdf)
        )
        streamed = await client.v1.quotes.pdf_async("qt_1")
        assert seawall.report_of(streamed.headers) is not None
        assert await streamed.read_async() == pdf

        api.route("/v1/quotes/qt_1/pdf", Fault.truncated())
        streamed = await client.v1.quotes.pdf_async("qt_1")
        with pytest.raises(stripe.APIConnectionError):
            await streamed.read_async()

        api.route("/v1/quotes/qt_1/pdf", Fault.reset_connection())
        with pytest.raises(stripe.APIConnectionError) as failed:
            await client.v1.quotes.pdf_async("qt_1")
        assert seawall.report_of(failed.value) is not None


async def test_stripe_client_keeps_the_retry_layer_to_seawall() -> None:
    async with seawall.ResilientClient("stripe-options") as http:
        for name, value in [("max_network_retries", 2), ("http_client", None)]:
            with pytest.raises(TypeError, match=f"stripe_client: {name} is set by seawall"):
                stripe_client("sk_test_x", http, **{name: value})
        client = stripe_client("sk_test_x", http, stripe_account="acct_1")
        assert isinstance(client, stripe.StripeClient)
        http_client = StripeHTTPClient(http)
        assert http_client.client is http
        await http_client.close_async()  # leaves the seawall client open: it is yours
        http_client.close()
        assert not http.is_closed


def test_stripe_http_client_is_async_only() -> None:
    http_client = StripeHTTPClient(httpx.AsyncClient())
    with pytest.raises(RuntimeError, match="async only"):
        http_client.request("get", "https://api.stripe.com/v1/customers", {})
    with pytest.raises(RuntimeError, match="async only"):
        http_client.request_stream("get", "https://api.stripe.com/v1/customers", {})


def test_response_headers_read_like_the_response_headers() -> None:
    headers = ResponseHeaders(httpx.Headers({"Request-Id": "req_1", "X-A": "1"}), None)
    assert headers["request-id"] == "req_1"
    assert "REQUEST-ID" in headers
    assert headers.get("missing") is None
    assert sorted(headers) == ["request-id", "x-a"]
    assert len(headers) == 2
    assert headers.report is None
    assert seawall.report_of(headers) is None
    assert repr(headers) == "ResponseHeaders({'request-id': 'req_1', 'x-a': '1'})"


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
async def test_an_attempt_timeout_is_the_sdks_timeout_error(
    sdk: str, api: FaultyUpstream, dependency: str
) -> None:
    pol = policy(attempts=2, timeouts=seawall.Timeouts(attempt=0.2, total=5))
    async with seawall.httpx2.ResilientClient(dependency, policy=pol) as http:
        client: openai.AsyncOpenAI | anthropic.AsyncAnthropic
        if sdk == "openai":
            client = openai.AsyncOpenAI(
                api_key="sk-test", base_url=f"{api.url}/v1", http_client=http, max_retries=0
            )
            timeout_error: type[Exception] = openai.APITimeoutError
        else:
            client = anthropic.AsyncAnthropic(
                api_key="sk-ant-test", base_url=api.url, http_client=http, max_retries=0
            )
            timeout_error = anthropic.APITimeoutError
        api.route("/v1/models", Fault.hang())
        with pytest.raises(timeout_error) as timed_out:
            await client.models.list()
    # seawall.httpx2.AttemptTimeout is an httpx2.ReadTimeout: the SDK's timeout error.
    assert isinstance(timed_out.value.__cause__, seawall.httpx2.AttemptTimeout)
    report = seawall.report_of(timed_out.value)
    assert report is not None
    assert (report.attempts, report.outcome, report.retries) == (
        2,
        "retry_exhausted",
        ("attempt_timeout",),
    )
    assert api.count("/v1/models") == 2
