"""Issue 12, items 1, 7 and 8: each endpoint's credentials are its own, a blank
idempotency key is no key, and endpoints match by origin and path segment."""

from __future__ import annotations

import base64

import httpx
import pytest

import seawall
from seawall import Policy, Retry
from seawall.testing import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

NO_WAIT = seawall.Backoff(initial=0.0, maximum=0.0, jitter=False)
RETRY = Retry(attempts=3, backoff=NO_WAIT, budget=None)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def with_userinfo(url: str, userinfo: str) -> str:
    return url.replace("http://", f"http://{userinfo}@")


async def test_failover_never_carries_one_providers_credentials_to_another(
    upstream: FaultyUpstream, upstream_b: FaultyUpstream
) -> None:
    upstream.route("/x", Fault.error(503))
    a = with_userinfo(upstream.url, "alice:secret-a")
    async with seawall.ResilientClient(
        "pay", endpoints=[a, upstream_b.url], policy=Policy(retry=RETRY, breaker=None)
    ) as client:
        response = await client.get("/x")
    assert response.status_code == 200
    (to_a,) = upstream.requests("/x")
    (to_b,) = upstream_b.requests("/x")
    assert to_a.header("authorization") == basic("alice", "secret-a")
    assert to_b.header("authorization") is None  # a's credentials stayed with a


async def test_failover_carries_the_next_providers_own_credentials(
    upstream: FaultyUpstream, upstream_b: FaultyUpstream
) -> None:
    upstream.route("/x", Fault.error(503))
    a = with_userinfo(upstream.url, "alice:secret-a")
    b = with_userinfo(upstream_b.url, "bob:secret-b")
    async with seawall.ResilientClient(
        "pay", endpoints=[a, b], policy=Policy(retry=RETRY, breaker=None)
    ) as client:
        await client.get("/x")
    (to_b,) = upstream_b.requests("/x")
    assert to_b.header("authorization") == basic("bob", "secret-b")


async def test_an_explicit_authorization_header_does_not_cross_origins(
    upstream: FaultyUpstream, upstream_b: FaultyUpstream
) -> None:
    upstream.route("/x", Fault.error(503))
    async with seawall.ResilientClient(
        "pay",
        endpoints=[upstream.url, upstream_b.url],
        policy=Policy(retry=RETRY, breaker=None),
        headers={"Authorization": "Bearer for-a-only"},
    ) as client:
        await client.get("/x")
    assert upstream.requests("/x")[0].header("authorization") == "Bearer for-a-only"
    assert upstream_b.requests("/x")[0].header("authorization") is None


@pytest.mark.parametrize("key", ["", "   ", "\t"], ids=["empty", "spaces", "tab"])
async def test_a_blank_idempotency_key_is_no_key(upstream: FaultyUpstream, key: str) -> None:
    upstream.route("/pay", Fault.error(503))
    async with seawall.ResilientClient(
        "pay", base_url=upstream.url, policy=Policy(retry=RETRY, breaker=None)
    ) as client:
        response = await client.post("/pay", json={}, idempotency_key=key)
    assert response.status_code == 503
    assert upstream.count("/pay") == 1  # a keyless POST: never resent
    report = seawall.report_of(response)
    assert report is not None
    assert report.retry_stopped == "not_idempotent"


async def test_a_blank_idempotency_header_is_no_key(upstream: FaultyUpstream) -> None:
    upstream.route("/pay", Fault.error(503))
    async with seawall.ResilientClient(
        "pay", base_url=upstream.url, policy=Policy(retry=RETRY, breaker=None)
    ) as client:
        await client.post("/pay", json={}, headers={"Idempotency-Key": ""})
    assert upstream.count("/pay") == 1


async def test_idempotency_header_names_are_configurable(upstream: FaultyUpstream) -> None:
    upstream.route("/pay", Fault.error(503), Fault.ok())
    policy = Policy(retry=RETRY, breaker=None, idempotency_headers=("X-Request-Key",))
    async with seawall.ResilientClient("pay", base_url=upstream.url, policy=policy) as client:
        response = await client.post("/pay", json={}, idempotency_key="k-9")
    assert response.status_code == 200
    sent = upstream.requests("/pay")
    assert [r.header("x-request-key") for r in sent] == ["k-9", "k-9"]


async def test_another_host_with_a_common_prefix_is_not_an_endpoint(
    upstream: FaultyUpstream,
) -> None:
    port = upstream.port
    breaker = seawall.CircuitBreaker(minimum_calls=1, failure_rate_threshold=1.0)
    async with seawall.ResilientClient(
        "pay", endpoints=[f"http://127.0.0.1:{port}"], policy=Policy(breaker=breaker)
    ) as client:
        # 127.0.0.12 starts like 127.0.0.1: a string-prefix match took it for it.
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.12:{port}/x")
        stats = client.breakers[f"http://127.0.0.1:{port}"].statistics()
    assert stats.calls == 0  # not held against the endpoint
    assert upstream.count() == 0  # and not sent to it


async def test_a_path_prefix_matches_at_a_segment_boundary(upstream: FaultyUpstream) -> None:
    base = f"{upstream.url}/api"
    async with seawall.ResilientClient(
        "pay", endpoints=[base], policy=Policy(breaker=seawall.CircuitBreaker())
    ) as client:
        await client.get(f"{upstream.url}/api/v1")
        await client.get(f"{upstream.url}/apix")
        stats = client.breakers[base].statistics()
    assert stats.calls == 1  # /api/v1 is under /api; /apix is not
