"""Fallbacks: the last good response (stale-if-error) and the default answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

import seawall
from seawall.testing import ManualClock
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

PolicyFactory = Callable[..., seawall.Policy]
ClientFactory = Callable[..., seawall.ResilientClient]

STALE = seawall.Fallback(stale_if_error=60.0)


@pytest.fixture
def server() -> Iterator[FaultyUpstream]:
    """A server of the test's own, which it may stop to make connections fail."""
    with FaultyUpstream() as s:
        yield s


# -- the failures a cached response covers ---------------------------------------------


@dataclass(frozen=True)
class Failure:
    outcome: str
    parts: dict[str, object]
    trigger: Callable[[seawall.ResilientClient, FaultyUpstream], Awaitable[object]]


async def _open_breaker(client: seawall.ResilientClient, server: FaultyUpstream) -> object:
    client.breaker.force_open()
    return await client.get("/item")


async def _full_bulkhead(client: seawall.ResilientClient, server: FaultyUpstream) -> object:
    token = client.bulkhead.try_acquire()
    assert token is not None
    try:
        return await client.get("/item")
    finally:
        client.bulkhead.release(token)


async def _again(client: seawall.ResilientClient, server: FaultyUpstream) -> object:
    return await client.get("/item")


async def _hang(client: seawall.ResilientClient, server: FaultyUpstream) -> object:
    server.route("/item", Fault.hang())
    return await client.get("/item")


async def _unavailable(client: seawall.ResilientClient, server: FaultyUpstream) -> object:
    server.route("/item", Fault.error(503))
    return await client.get("/item")


async def _down(client: seawall.ResilientClient, server: FaultyUpstream) -> object:
    server.stop()
    return await client.get("/item")


FAILURES = [
    pytest.param(
        Failure("circuit_open", {"breaker": seawall.CircuitBreaker()}, _open_breaker),
        id="breaker-open",
    ),
    pytest.param(
        Failure("bulkhead_full", {"bulkhead": seawall.Bulkhead(max_concurrent=1)}, _full_bulkhead),
        id="bulkhead-full",
    ),
    pytest.param(
        Failure("rate_limited", {"rate_limit": seawall.RateLimit(rate=1, per=60)}, _again),
        id="rate-limited",
    ),
    pytest.param(
        Failure("timeout", {"retry": None, "timeouts": seawall.Timeouts(read=0.05)}, _hang),
        id="read-timeout",
    ),
    pytest.param(
        Failure(
            "deadline_exceeded",
            {"retry": None, "timeouts": seawall.Timeouts(read=5.0, total=0.1)},
            _hang,
        ),
        id="deadline",
    ),
    pytest.param(Failure("retry_exhausted", {}, _unavailable), id="5xx-retries-exhausted"),
    pytest.param(
        Failure(
            "connect_error",
            {"retry": None, "pool": seawall.Pool(max_keepalive=0)},
            _down,
        ),
        id="connect-error",
    ),
]


@pytest.mark.parametrize("failure", FAILURES)
async def test_failing_get_is_answered_from_the_cache(
    server: FaultyUpstream,
    clock: ManualClock,
    policy: PolicyFactory,
    make_client: ClientFactory,
    failure: Failure,
) -> None:
    server.route("/item", Fault(body=b'{"price": 10}', headers={"ETag": '"v1"'}))
    async with make_client(
        "catalog",
        policy=policy(fallback=STALE, **failure.parts),
        base_url=server.url,
        clock=clock,
    ) as client:
        fresh = await client.get("/item")
        assert fresh.json() == {"price": 10}
        clock.advance(12.5)
        stale = await failure.trigger(client, server)
    assert isinstance(stale, httpx.Response)
    assert stale.status_code == 200
    assert stale.json() == {"price": 10}
    assert stale.headers["etag"] == '"v1"'
    assert stale.headers["age"] == "12"
    assert stale.elapsed.total_seconds() >= 0
    report = seawall.report_of(stale)
    assert report is not None
    assert (report.fallback, report.outcome) == ("cache", failure.outcome)


@pytest.mark.parametrize("failure", FAILURES)
async def test_without_a_cached_response_the_failure_surfaces(
    server: FaultyUpstream,
    clock: ManualClock,
    policy: PolicyFactory,
    make_client: ClientFactory,
    failure: Failure,
) -> None:
    # The only earlier response was to another URL.
    async with make_client(
        "catalog",
        policy=policy(fallback=STALE, **failure.parts),
        base_url=server.url,
        clock=clock,
    ) as client:
        assert (await client.get("/other")).status_code == 200
        try:
            result = await failure.trigger(client, server)
        except Exception as exc:
            report = seawall.report_of(exc)
        else:
            assert isinstance(result, httpx.Response)
            assert result.status_code == 503
            report = seawall.report_of(result)
    assert report is not None
    assert (report.outcome, report.fallback) == (failure.outcome, None)


async def test_cached_response_too_old_is_not_served(
    upstream: FaultyUpstream,
    clock: ManualClock,
    policy: PolicyFactory,
    make_client: ClientFactory,
) -> None:
    upstream.route("/item", Fault.ok(), Fault.error(503))
    async with make_client(
        "catalog", policy=policy(retry=None, fallback=STALE), base_url=upstream.url, clock=clock
    ) as client:
        await client.get("/item")
        clock.advance(59.0)
        young = await client.get("/item")
        clock.advance(1.0)
        old = await client.get("/item")
    assert (young.status_code, young.headers["age"]) == (200, "59")
    assert young.json() == {"path": "/item", "n": 1}
    assert old.status_code == 503
    assert seawall.report_of(old).fallback is None  # type: ignore[union-attr]


async def test_newer_success_replaces_the_cached_response(
    upstream: FaultyUpstream,
    clock: ManualClock,
    policy: PolicyFactory,
    make_client: ClientFactory,
) -> None:
    upstream.route("/item", Fault.ok(), Fault.ok(), Fault.error(500))
    async with make_client(
        "catalog", policy=policy(retry=None, fallback=STALE), base_url=upstream.url, clock=clock
    ) as client:
        await client.get("/item")
        clock.advance(50.0)
        await client.get("/item")
        clock.advance(20.0)  # 70 s after the first, 20 s after the second
        stale = await client.get("/item")
    assert stale.json() == {"path": "/item", "n": 2}
    assert stale.headers["age"] == "20"


# -- the default answer -------------------------------------------------------------


async def test_static_default_answers_a_failing_call(
    upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/item", Fault.error(503))
    default = httpx.Response(200, json={"price": None}, headers={"X-Fallback": "1"})
    async with make_client(
        "catalog",
        policy=policy(fallback=seawall.Fallback(default=default)),
        base_url=upstream.url,
    ) as client:
        first = await client.get("/item")
        second = await client.get("/item")
    for response in (first, second):
        assert response.status_code == 200
        assert response.json() == {"price": None}
        assert response.headers["x-fallback"] == "1"
        assert response.elapsed.total_seconds() >= 0
        report = seawall.report_of(response)
        assert report is not None
        assert (report.fallback, report.outcome, report.status_code) == (
            "default",
            "retry_exhausted",
            503,
        )
    assert first is not second


async def test_callable_default_gets_the_request_and_the_error(
    refused_url: str, upstream: FaultyUpstream, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    calls: list[tuple[str, type[BaseException]]] = []

    def default(request: httpx.Request, error: BaseException) -> httpx.Response:
        calls.append((request.url.path, type(error)))
        return httpx.Response(299, text=f"fallback for {request.url.path}")

    upstream.route("/bad", Fault.error(500))
    fallback = seawall.Fallback(default=default)
    async with (
        make_client("a", policy=policy(retry=None, fallback=fallback), base_url=upstream.url) as up,
        make_client("b", policy=policy(retry=None, fallback=fallback), base_url=refused_url) as dn,
    ):
        status = await up.get("/bad")
        down = await dn.get("/down")
    assert (status.status_code, status.text) == (299, "fallback for /bad")
    assert (down.status_code, down.text) == (299, "fallback for /down")
    assert calls == [("/bad", httpx.HTTPStatusError), ("/down", httpx.ConnectError)]
    assert seawall.report_of(down).outcome == "connect_error"  # type: ignore[union-attr]
    assert down.elapsed.total_seconds() >= 0


async def test_cache_first_then_default(
    upstream: FaultyUpstream, clock: ManualClock, policy: PolicyFactory, make_client: ClientFactory
) -> None:
    upstream.route("/cached", Fault.ok(), Fault.error(503))
    upstream.route("/never-ok", Fault.error(503))
    fallback = seawall.Fallback(stale_if_error=60, default=httpx.Response(200, text="default"))
    async with make_client(
        "catalog",
        policy=policy(retry=None, fallback=fallback),
        base_url=upstream.url,
        clock=clock,
    ) as client:
        await client.get("/cached")
        cached = await client.get("/cached")
        default = await client.get("/never-ok")
    assert seawall.report_of(cached).fallback == "cache"  # type: ignore[union-attr]
    assert seawall.report_of(default).fallback == "default"  # type: ignore[union-attr]
    assert default.text == "default"


@pytest.mark.parametrize("status", [400, 404, 409], ids=str)
async def test_a_client_error_is_not_covered_by_a_fallback(
    upstream: FaultyUpstream,
    clock: ManualClock,
    policy: PolicyFactory,
    make_client: ClientFactory,
    status: int,
) -> None:
    upstream.route("/item", Fault.ok(), Fault.error(status))
    fallback = seawall.Fallback(stale_if_error=60, default=httpx.Response(200))
    async with make_client(
        "catalog", policy=policy(fallback=fallback), base_url=upstream.url, clock=clock
    ) as client:
        await client.get("/item")
        response = await client.get("/item")
    assert response.status_code == status
    assert seawall.report_of(response).fallback is None  # type: ignore[union-attr]


# -- what the cache keeps, and for whom ---------------------------------------------------


async def _store_then_fail(
    client: seawall.ResilientClient, upstream: FaultyUpstream, path: str, **kwargs: object
) -> None:
    upstream.route(path, Fault(body=b"secret", headers={"Vary": "Accept"}))
    assert (await client.get(path, **kwargs)).status_code == 200  # type: ignore[arg-type]
    upstream.route(path, Fault.error(503))


def _served(response: httpx.Response) -> bool:
    report = seawall.report_of(response)
    assert report is not None
    if report.fallback == "cache":
        assert response.content == b"secret"
        return True
    assert response.status_code == 503
    return False


@pytest.fixture
async def stale_client(
    upstream: FaultyUpstream, clock: ManualClock, make_client: ClientFactory
) -> seawall.ResilientClient:
    async with make_client(
        "catalog",
        policy=seawall.Policy(retry=None, breaker=None, fallback=STALE),
        base_url=upstream.url,
        clock=clock,
    ) as client:
        yield client  # type: ignore[misc]


async def test_cache_key_covers_method_and_full_url(
    upstream: FaultyUpstream, stale_client: seawall.ResilientClient
) -> None:
    upstream.route("/item", Fault(body=b"secret"))
    await stale_client.get("/item", params={"page": "1"})
    upstream.route("/item", Fault.error(503))
    assert _served(await stale_client.get("/item", params={"page": "1"}))
    assert not _served(await stale_client.get("/item", params={"page": "2"}))
    assert not _served(await stale_client.get("/item"))
    # Only GETs are served from the cache, never another method to the same URL.
    for method in ("POST", "PUT", "DELETE", "HEAD"):
        response = await stale_client.request(method, "/item", params={"page": "1"})
        assert response.status_code == 503
        assert seawall.report_of(response).fallback is None  # type: ignore[union-attr]


async def test_cache_key_covers_the_varied_request_headers(
    upstream: FaultyUpstream, stale_client: seawall.ResilientClient
) -> None:
    await _store_then_fail(stale_client, upstream, "/v", headers={"Accept": "application/json"})
    assert _served(await stale_client.get("/v", headers={"Accept": "application/json"}))
    assert not _served(await stale_client.get("/v", headers={"Accept": "text/html"}))
    assert not _served(await stale_client.get("/v", headers={"Accept": ""}))


@pytest.mark.parametrize(
    "header",
    ["Authorization", "Cookie", "Proxy-Authorization"],
)
async def test_credentialed_response_is_only_served_to_the_same_credentials(
    upstream: FaultyUpstream, stale_client: seawall.ResilientClient, header: str
) -> None:
    await _store_then_fail(stale_client, upstream, "/me", headers={header: "alice-token"})
    assert _served(await stale_client.get("/me", headers={header: "alice-token"}))
    assert not _served(await stale_client.get("/me", headers={header: "bob-token"}))
    assert not _served(await stale_client.get("/me"))


async def test_anonymous_response_is_not_served_to_a_credentialed_request(
    upstream: FaultyUpstream, stale_client: seawall.ResilientClient
) -> None:
    await _store_then_fail(stale_client, upstream, "/pub")
    assert not _served(await stale_client.get("/pub", headers={"Authorization": "Bearer x"}))
    assert not _served(await stale_client.get("/pub", headers={"Cookie": "session=x"}))
    assert _served(await stale_client.get("/pub"))


async def test_client_auth_is_part_of_the_credentials(
    upstream: FaultyUpstream, clock: ManualClock, make_client: ClientFactory
) -> None:
    policy = seawall.Policy(retry=None, breaker=None, fallback=STALE)
    async with make_client("c", policy=policy, base_url=upstream.url, clock=clock) as client:
        await _store_then_fail(client, upstream, "/me", auth=("alice", "pw"))
        assert _served(await client.get("/me", auth=("alice", "pw")))
        assert not _served(await client.get("/me", auth=("bob", "pw")))
        assert not _served(await client.get("/me", auth=("alice", "other-pw")))


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Cache-Control": "no-store"}, id="no-store"),
        pytest.param({"Cache-Control": "private, No-Store"}, id="no-store-mixed-case"),
        pytest.param({"Vary": "*"}, id="vary-star"),
    ],
)
async def test_unstorable_responses_are_never_kept(
    upstream: FaultyUpstream, stale_client: seawall.ResilientClient, headers: dict[str, str]
) -> None:
    upstream.route("/x", Fault(body=b"secret", headers=headers), Fault.error(503))
    await stale_client.get("/x")
    assert not _served(await stale_client.get("/x"))
    assert len(stale_client.resilient_transport.runtime.cache) == 0  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [201, 203], ids=str)
async def test_any_2xx_is_kept_but_not_3xx_or_errors(
    upstream: FaultyUpstream, stale_client: seawall.ResilientClient, status: int
) -> None:
    upstream.route("/ok", Fault(status=status, body=b"secret"), Fault.error(503))
    upstream.route("/moved", Fault(status=304), Fault.error(503))
    upstream.route("/gone", Fault.error(404), Fault.error(503))
    for path in ("/ok", "/moved", "/gone"):
        await stale_client.get(path)
    kept = await stale_client.get("/ok")
    assert (kept.status_code, kept.content) == (status, b"secret")
    assert not _served(await stale_client.get("/moved"))
    assert not _served(await stale_client.get("/gone"))


async def test_cache_is_bounded_by_entries_least_recently_used_first(
    upstream: FaultyUpstream, clock: ManualClock, make_client: ClientFactory
) -> None:
    fallback = seawall.Fallback(stale_if_error=60, max_entries=2)
    policy = seawall.Policy(retry=None, breaker=None, fallback=fallback)
    async with make_client("c", policy=policy, base_url=upstream.url, clock=clock) as client:
        cache = client.resilient_transport.runtime.cache
        assert cache is not None
        for path in ("/a", "/b"):
            upstream.route(path, Fault(body=b"secret"))
            await client.get(path)
        upstream.route("/a", Fault.error(503))
        assert _served(await client.get("/a"))  # /a is now the most recently used
        upstream.route("/c", Fault(body=b"secret"))
        await client.get("/c")  # evicts /b
        assert len(cache) == 2
        upstream.route("/b", Fault.error(503))
        upstream.route("/c", Fault.error(503))
        assert not _served(await client.get("/b"))
        assert _served(await client.get("/a"))
        assert _served(await client.get("/c"))


async def test_cache_is_bounded_by_bytes(
    upstream: FaultyUpstream, clock: ManualClock, make_client: ClientFactory
) -> None:
    fallback = seawall.Fallback(stale_if_error=60, max_bytes=100)
    policy = seawall.Policy(retry=None, breaker=None, fallback=fallback)
    async with make_client("c", policy=policy, base_url=upstream.url, clock=clock) as client:
        cache = client.resilient_transport.runtime.cache
        assert cache is not None
        upstream.route("/huge", Fault(body=b"x" * 101), Fault.error(503))
        await client.get("/huge")
        assert (len(cache), cache.size) == (0, 0)
        assert not _served(await client.get("/huge"))
        for path in ("/a", "/b"):
            upstream.route(path, Fault(body=b"s" * 60), Fault.error(503))
            await client.get(path)
        assert (len(cache), cache.size) == (1, 60)
        assert (await client.get("/b")).content == b"s" * 60
        assert (await client.get("/a")).status_code == 503


async def test_streamed_and_non_get_responses_are_not_kept(
    upstream: FaultyUpstream, stale_client: seawall.ResilientClient
) -> None:
    async with stale_client.stream("GET", "/streamed") as response:
        await response.aread()
    await stale_client.post("/posted")
    assert len(stale_client.resilient_transport.runtime.cache) == 0  # type: ignore[arg-type]


async def test_gzip_body_is_replayed_decoded(
    upstream: FaultyUpstream, stale_client: seawall.ResilientClient
) -> None:
    import gzip

    payload = b'{"big": "' + b"z" * 500 + b'"}'
    upstream.route(
        "/gz",
        Fault(body=gzip.compress(payload), headers={"Content-Encoding": "gzip"}),
        Fault.error(503),
    )
    fresh = await stale_client.get("/gz")
    stale = await stale_client.get("/gz")
    assert fresh.content == payload
    assert stale.content == payload
    assert seawall.report_of(stale).fallback == "cache"  # type: ignore[union-attr]


async def test_streamed_get_is_answered_from_the_cache(
    upstream: FaultyUpstream, stale_client: seawall.ResilientClient
) -> None:
    upstream.route("/s", Fault(body=b"secret"), Fault.error(503))
    await stale_client.get("/s")
    async with stale_client.stream("GET", "/s") as response:
        body = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert (response.status_code, body) == (200, b"secret")
    assert seawall.report_of(response).fallback == "cache"  # type: ignore[union-attr]
    assert response.elapsed.total_seconds() >= 0
