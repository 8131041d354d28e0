"""The httpx API through ResilientClient and ResilientTransport, and the call report."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

import seawall
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

PolicyFactory = Callable[..., seawall.Policy]
ClientFactory = Callable[..., seawall.ResilientClient]


async def test_plain_async_client_with_resilient_transport_is_protected(
    upstream: FaultyUpstream, policy: PolicyFactory
) -> None:
    # What an httpx-based SDK gets when handed such an AsyncClient.
    upstream.route("/r", Fault.error(503), Fault.ok())
    transport = seawall.ResilientTransport("sdk", policy(attempts=2))
    async with httpx.AsyncClient(transport=transport, base_url=upstream.url) as client:
        response = await client.get("/r")
        assert response.status_code == 200
        assert response.json() == {"path": "/r", "n": 2}
        report = seawall.report_of(response)
        assert report is not None
        assert (report.dependency, report.attempts, report.retries) == ("sdk", 2, ("status_503",))
        assert report.outcome == seawall.Outcome.SUCCESS
        assert response.elapsed.total_seconds() > 0
    assert upstream.count("/r") == 2
    assert transport.dependency == "sdk"


async def test_plain_async_client_idempotency_key_extension(
    upstream: FaultyUpstream, policy: PolicyFactory
) -> None:
    upstream.route("/pay", Fault.reset_connection(), Fault.ok())
    transport = seawall.ResilientTransport("sdk", policy())
    async with httpx.AsyncClient(transport=transport, base_url=upstream.url) as client:
        response = await client.post(
            "/pay", json={"amount": 1}, extensions={"idempotency_key": "order-7"}
        )
    assert response.status_code == 200
    assert upstream.count("/pay", idempotency_key="order-7") == 2
    assert [r.body for r in upstream.requests("/pay")] == [b'{"amount":1}'] * 2


async def test_get_post_put_patch_delete_head_options(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    async with make_client("api", policy=policy(), base_url=upstream.url) as client:
        assert (await client.get("/a", params={"q": "1"})).json() == {"path": "/a", "n": 1}
        assert (await client.post("/a", json={"x": 1})).status_code == 200
        assert (await client.put("/a", content=b"put")).status_code == 200
        assert (await client.patch("/a", data={"k": "v"})).status_code == 200
        assert (await client.delete("/a")).status_code == 200
        head = await client.head("/a")
        assert (head.status_code, head.content) == (200, b"")
        assert (await client.options("/a")).status_code == 200
        assert (await client.request("TRACE", "/a")).status_code == 200
    recorded = upstream.requests("/a")
    assert [r.method for r in recorded] == [
        "GET",
        "POST",
        "PUT",
        "PATCH",
        "DELETE",
        "HEAD",
        "OPTIONS",
        "TRACE",
    ]
    assert recorded[0].target == "/a?q=1"
    assert json.loads(recorded[1].body) == {"x": 1}
    assert recorded[2].body == b"put"
    assert recorded[3].body == b"k=v"


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete", "request", "stream"], ids=str)
async def test_idempotency_key_keyword_sets_the_header(
    upstream: FaultyUpstream, policy: PolicyFactory, method: str, make_client: ClientFactory
) -> None:
    async with make_client("api", policy=policy(), base_url=upstream.url) as client:
        if method == "request":
            response = await client.request("POST", "/k", idempotency_key="order-42")
        elif method == "stream":
            async with client.stream("POST", "/k", idempotency_key="order-42") as response:
                await response.aread()
        else:
            response = await getattr(client, method)("/k", idempotency_key="order-42")
    assert response.status_code == 200
    assert upstream.count("/k", idempotency_key="order-42") == 1


async def test_idempotency_key_extension_and_explicit_header(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    async with make_client("api", policy=policy(), base_url=upstream.url) as client:
        await client.post("/k", extensions={"idempotency_key": "via-extension"})
        await client.post("/k", headers={"Idempotency-Key": "via-header"})
        await client.post("/k")
    assert [r.idempotency_key for r in upstream.requests("/k")] == [
        "via-extension",
        "via-header",
        None,
    ]


async def test_stream_reads_the_body_incrementally_with_a_report(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    body = bytes(range(256)) * 64
    upstream.route("/big", Fault.error(502), Fault(body=body))
    async with (
        make_client("api", policy=policy(), base_url=upstream.url) as client,
        client.stream("GET", "/big") as response,
    ):
        assert response.status_code == 200
        report = seawall.report_of(response)
        assert report is not None
        assert (report.attempts, report.retries) == (2, ("status_502",))
        chunks = [chunk async for chunk in response.aiter_bytes()]
    assert b"".join(chunks) == body
    assert response.elapsed.total_seconds() > 0


async def test_auth_and_event_hooks(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    seen: list[tuple[str, object]] = []

    async def on_request(request: httpx.Request) -> None:
        seen.append(("request", request.url.path))

    async def on_response(response: httpx.Response) -> None:
        report = seawall.report_of(response)
        seen.append(("response", report.attempts if report else None))

    upstream.route("/me", Fault.error(500), Fault.ok())
    async with make_client(
        "api",
        policy=policy(),
        base_url=upstream.url,
        auth=("alice", "s3cret"),
        headers={"X-Team": "core"},
        event_hooks={"request": [on_request], "response": [on_response]},
    ) as client:
        response = await client.get("/me")
    assert response.status_code == 200
    # Hooks run once per logical call, around the whole retried exchange.
    assert seen == [("request", "/me"), ("response", 2)]
    for recorded in upstream.requests("/me"):
        assert recorded.header("authorization") == "Basic YWxpY2U6czNjcmV0"
        assert recorded.header("x-team") == "core"


async def test_response_elapsed_and_report_on_an_error_status(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/missing", Fault(status=404, delay=0.05))
    async with make_client("api", policy=policy(), base_url=upstream.url) as client:
        response = await client.get("/missing")
        with pytest.raises(httpx.HTTPStatusError):
            response.raise_for_status()
    assert response.elapsed.total_seconds() >= 0.05
    report = response.extensions["seawall"]
    assert report is seawall.report_of(response)
    assert report.as_dict()["status_code"] == 404
    assert (report.outcome, report.attempts, report.method) == ("http_error", 1, "GET")
    assert report.endpoint == upstream.url
    assert report.elapsed >= 0.05


async def test_report_of_a_raised_httpx_error(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/r", Fault.reset_connection())
    async with make_client("api", policy=policy(attempts=2), base_url=upstream.url) as client:
        with pytest.raises(httpx.TransportError) as info:
            await client.get("/r")
    report = seawall.report_of(info.value)
    assert report is not None
    assert (report.outcome, report.attempts, report.retries) == (
        "retry_exhausted",
        2,
        ("transport_error",),
    )
    assert upstream.count("/r") == 2


async def test_report_endpoint_is_the_origin_with_default_port(policy: PolicyFactory) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=str(request.url))

    transport = seawall.ResilientTransport("mock", policy(), transport=httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport) as client:
        plain = await client.get("http://api.example/v1/x?y=1")
        tls = await client.get("https://api.example/v1/x")
    assert plain.text == "http://api.example/v1/x?y=1"
    assert seawall.report_of(plain).endpoint == "http://api.example:80"  # type: ignore[union-attr]
    assert seawall.report_of(tls).endpoint == "https://api.example:443"  # type: ignore[union-attr]


async def test_client_handles_and_argument_checks(
    upstream: FaultyUpstream, make_client: ClientFactory
) -> None:
    policy = seawall.Policy(bulkhead=seawall.Bulkhead(max_concurrent=3))
    async with make_client("api", policy=policy, base_url=upstream.url) as client:
        assert client.dependency == "api"
        assert client.policy is policy
        assert client.resilient_transport.policy is policy
        assert client.bulkhead.statistics().limit == 3
        assert client.breakers == {"": client.breaker}
        assert "api" in repr(client)
    async with make_client("bare", policy=seawall.Policy(breaker=None)) as bare:
        with pytest.raises(LookupError, match="no bulkhead"):
            _ = bare.bulkhead
        with pytest.raises(LookupError, match="no circuit breaker"):
            _ = bare.breaker
        assert bare.breakers == {}
    async with make_client("multi", endpoints=[upstream.url, "http://b.test"]) as multi:
        with pytest.raises(LookupError, match="breakers"):
            _ = multi.breaker
        assert set(multi.breakers) == {upstream.url, "http://b.test"}
    with pytest.raises(ValueError, match="timeouts"):
        make_client("api", base_url=upstream.url, timeout=1.0)
    with pytest.raises(ValueError, match="pool"):
        make_client("api", base_url=upstream.url, limits=httpx.Limits())
    with pytest.raises(ValueError, match="not both"):
        make_client("api", base_url=upstream.url, endpoints=[upstream.url])
    with pytest.raises(ValueError, match="non-empty"):
        make_client("api", endpoints=[])
