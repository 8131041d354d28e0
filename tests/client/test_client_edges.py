"""Edges: default fallbacks per method, must-revalidate, URLs outside the endpoints,
requests httpx cannot send, environment proxies."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

import seawall
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

PolicyFactory = Callable[..., seawall.Policy]
ClientFactory = Callable[..., seawall.ResilientClient]


@pytest.mark.parametrize(
    ("method", "answered"),
    [
        pytest.param("GET", True, id="GET-gets-the-default"),
        pytest.param("POST", False, id="POST-gets-the-failure"),
    ],
)
async def test_a_default_answers_only_its_methods(
    upstream: FaultyUpstream,
    policy: PolicyFactory,
    make_client: ClientFactory,
    method: str,
    answered: bool,
) -> None:
    upstream.route("/x", Fault.error(500))
    fallback = seawall.Fallback(default=httpx.Response(200, json={"canned": True}))
    async with make_client(
        "dep", policy=policy(retry=None, fallback=fallback), base_url=upstream.url
    ) as client:
        response = await client.request(method, "/x")
    report = seawall.report_of(response)
    assert report is not None
    if answered:
        assert response.json() == {"canned": True}
        assert report.fallback == "default"
    else:
        assert response.status_code == 500
        assert report.fallback is None


def test_default_methods_are_validated_and_normalised() -> None:
    assert seawall.Fallback(default_methods=["POST"]).default_methods == frozenset({"POST"})
    with pytest.raises(seawall.ConfigError, match="default_methods"):
        seawall.Fallback(default_methods=["post"])


@pytest.mark.parametrize("cache_control", ["must-revalidate", "max-age=0, proxy-revalidate"])
async def test_responses_that_forbid_stale_use_are_never_served_stale(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory, cache_control: str
) -> None:
    upstream.route("/items", Fault(headers={"Cache-Control": cache_control}), Fault.error(500))
    fallback = seawall.Fallback(stale_if_error=60)
    async with make_client(
        "dep", policy=policy(retry=None, fallback=fallback), base_url=upstream.url
    ) as client:
        assert (await client.get("/items")).status_code == 200
        second = await client.get("/items")
    assert second.status_code == 500


async def test_a_url_outside_the_endpoints_goes_out_as_is_without_their_breakers(
    upstream: FaultyUpstream, upstream_b: FaultyUpstream, make_client: ClientFactory
) -> None:
    upstream_b.route("/token", Fault.error(500))
    policy = seawall.Policy(
        retry=None, breaker=seawall.CircuitBreaker(minimum_calls=1, window_size=1)
    )
    async with make_client("sms", policy=policy, endpoints=[upstream.url]) as client:
        response = await client.post(f"{upstream_b.url}/token")
        assert response.status_code == 500
        report = seawall.report_of(response)
        assert report is not None
        assert report.endpoint == f"http://127.0.0.1:{upstream_b.port}"
        breaker = client.breakers[upstream.url]
        assert breaker.statistics().calls == 0
        assert breaker.state is seawall.BreakerState.CLOSED
    assert upstream.count() == 0
    assert upstream_b.count("/token") == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_request_httpx_cannot_send_is_neither_retried_nor_blamed(
    policy: PolicyFactory, make_client: ClientFactory, method: str
) -> None:
    breaker = seawall.CircuitBreaker(minimum_calls=1, window_size=1)
    async with make_client("dep", policy=policy(attempts=3, breaker=breaker)) as client:
        with pytest.raises(httpx.UnsupportedProtocol) as info:
            await client.request(method, "ftp://example.invalid/upload", content=b"x")
        assert client.breaker.statistics().calls == 0
    report = seawall.report_of(info.value)
    assert report is not None
    assert (report.outcome, report.attempts, report.retries) == ("error", 1, ())


async def test_environment_proxies_are_used_beneath_the_policy(
    upstream: FaultyUpstream, policy: PolicyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", upstream.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with seawall.ResilientClient("dep", policy=policy(retry=None)) as client:
        response = await client.get("http://upstream.invalid/via-proxy")
    assert response.status_code == 200
    assert upstream.requests()[0].target == "http://upstream.invalid/via-proxy"
    report = seawall.report_of(response)
    assert report is not None
    assert report.outcome == "success"


async def test_the_same_secret_as_a_cookie_and_as_a_bearer_token_are_different_credentials(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/me", Fault.ok(), Fault.error(500))
    fallback = seawall.Fallback(stale_if_error=60)
    async with make_client(
        "dep", policy=policy(retry=None, fallback=fallback), base_url=upstream.url
    ) as client:
        first = await client.get("/me", headers={"Authorization": "s3cret"})
        assert first.status_code == 200
        as_cookie = await client.get("/me", headers={"Cookie": "s3cret"})
        same_token = await client.get("/me", headers={"Authorization": "s3cret"})
    assert as_cookie.status_code == 500
    assert same_token.status_code == 200
    report = seawall.report_of(same_token)
    assert report is not None
    assert report.fallback == "cache"
