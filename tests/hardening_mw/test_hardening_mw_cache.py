"""Items 4 and 5: the fallback cache never serves one user's answer to another."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import seawall
from seawall.testing import Fault, FaultyUpstream, ManualClock

pytestmark = pytest.mark.anyio

POLICY = seawall.Policy(retry=None, breaker=None, fallback=seawall.Fallback(stale_if_error=60.0))


@pytest.fixture
async def client(
    upstream: FaultyUpstream, clock: ManualClock
) -> AsyncIterator[seawall.ResilientClient]:
    async with seawall.ResilientClient(
        "accounts", base_url=upstream.url, policy=POLICY, clock=clock
    ) as c:
        yield c


def served(response: httpx.Response) -> bool:
    """Whether the cache answered (the upstream itself answers 503 by then)."""
    report = seawall.report_of(response)
    assert report is not None
    return report.fallback == "cache"


async def store_then_fail(
    client: seawall.ResilientClient,
    upstream: FaultyUpstream,
    path: str,
    fault: Fault | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """One good answer to ``GET path`` (with *kwargs*), then the upstream fails for good."""
    upstream.route(path, fault or Fault(body=b"alice's data"))
    first = await client.get(path, **kwargs)
    assert first.status_code == (fault.status if fault else 200)
    upstream.route(path, Fault.error(503))
    return first


@pytest.mark.parametrize(
    "header", ["X-API-Key", "X-Auth-Token", "Api-Key", "X-Tenant", "Authorization"]
)
async def test_an_answer_is_served_only_to_the_same_value_of_any_other_header(
    client: seawall.ResilientClient, upstream: FaultyUpstream, header: str
) -> None:
    await store_then_fail(client, upstream, "/me", headers={header: "alice-key"})
    assert served(await client.get("/me", headers={header: "alice-key"}))
    bob = await client.get("/me", headers={header: "bob-key"})
    assert (bob.status_code, served(bob)) == (503, False)
    assert not served(await client.get("/me"))
    assert not served(await client.get("/me", headers={header: "alice-key", "X-Other": "1"}))


async def test_neutral_headers_do_not_split_the_cache(
    client: seawall.ResilientClient, upstream: FaultyUpstream
) -> None:
    first = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "X-Request-ID": "r-1",
        "Idempotency-Key": "k-1",
        "Request-Timeout": "2.5",
        "Cache-Control": "no-cache",
        "User-Agent": "shop/1",
    }
    await store_then_fail(client, upstream, "/items", headers=first)
    later = {
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "X-Request-ID": "r-2",
        "Idempotency-Key": "k-2",
        "Request-Timeout": "0.7",
        "User-Agent": "shop/2",
    }
    assert served(await client.get("/items", headers=later))


async def test_a_private_answer_goes_back_to_the_same_credentials_only(
    client: seawall.ResilientClient, upstream: FaultyUpstream
) -> None:
    private = Fault(body=b"alice's account", headers={"Cache-Control": "private, max-age=60"})
    await store_then_fail(client, upstream, "/account", private, headers={"X-API-Key": "alice"})
    assert served(await client.get("/account", headers={"X-API-Key": "alice"}))
    assert not served(await client.get("/account", headers={"X-API-Key": "bob"}))
    assert not served(await client.get("/account"))


async def test_a_private_answer_to_a_request_that_names_no_one_is_not_kept(
    client: seawall.ResilientClient, upstream: FaultyUpstream
) -> None:
    private = Fault(body=b"someone's account", headers={"Cache-Control": "private"})
    await store_then_fail(client, upstream, "/account", private)
    assert not served(await client.get("/account"))
    assert len(client.resilient_transport.runtime.cache or ()) == 0


async def test_partial_content_is_never_kept(
    client: seawall.ResilientClient, upstream: FaultyUpstream
) -> None:
    partial = Fault(status=206, body=b"alice", headers={"Content-Range": "bytes 0-4/100"})
    await store_then_fail(client, upstream, "/file", partial)
    assert not served(await client.get("/file"))
    assert len(client.resilient_transport.runtime.cache or ()) == 0


async def test_a_range_request_is_neither_kept_nor_answered_from_the_cache(
    client: seawall.ResilientClient, upstream: FaultyUpstream
) -> None:
    # A server may ignore Range and answer 200 in full: still not kept.
    await store_then_fail(client, upstream, "/ranged", headers={"Range": "bytes=0-4"})
    assert not served(await client.get("/ranged"))
    assert not served(await client.get("/ranged", headers={"Range": "bytes=0-4"}))
    # A full answer kept for a plain GET does not answer a Range request.
    await store_then_fail(client, upstream, "/whole")
    assert served(await client.get("/whole"))
    assert not served(await client.get("/whole", headers={"Range": "bytes=0-4"}))


async def test_the_body_is_part_of_the_key(
    client: seawall.ResilientClient, upstream: FaultyUpstream
) -> None:
    upstream.route("/search", Fault(body=b"alice's results"))
    await client.request("GET", "/search", content=b'{"user": "alice"}')
    upstream.route("/search", Fault.error(503))
    assert served(await client.request("GET", "/search", content=b'{"user": "alice"}'))
    assert not served(await client.request("GET", "/search", content=b'{"user": "bob"}'))
    assert not served(await client.get("/search"))


async def test_a_streamed_request_body_is_never_keyed(
    client: seawall.ResilientClient, upstream: FaultyUpstream
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"alice"

    upstream.route("/search", Fault(body=b"alice's results"))
    await client.request("GET", "/search", content=body())
    assert len(client.resilient_transport.runtime.cache or ()) == 0


async def test_set_cookie_is_never_replayed(
    client: seawall.ResilientClient, upstream: FaultyUpstream
) -> None:
    fault = Fault(body=b"welcome", headers={"Set-Cookie": "session=alice-session; Path=/"})
    await store_then_fail(client, upstream, "/welcome", fault)
    client.cookies.clear()  # a standalone client has a jar; ask as someone without it
    stale = await client.get("/welcome")
    assert served(stale)
    assert stale.content == b"welcome"
    assert "set-cookie" not in stale.headers


async def test_no_credential_is_held_by_the_cache(
    client: seawall.ResilientClient, upstream: FaultyUpstream
) -> None:
    secret = "alice-secret-key"
    fault = Fault(body=b"ok", headers={"Vary": "X-API-Key, Authorization"})
    credentials: dict[str, Any] = {
        "params": {"api_key": secret},
        "headers": {"X-API-Key": secret, "Authorization": f"Bearer {secret}"},
    }
    await store_then_fail(client, upstream, "/me", fault, **credentials)
    assert served(await client.get("/me", **credentials))
    cache = client.resilient_transport.runtime.cache
    assert cache is not None
    held = repr([(key, entry) for key, entry in cache._entries.items()])
    assert secret not in held
    assert secret.encode().hex() not in held
