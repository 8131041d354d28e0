"""Item 3: a registry's clients keep no cookie jar, so no upstream session crosses users."""

from __future__ import annotations

from http.cookiejar import CookieJar

import pytest

import seawall
from seawall.testing import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

NO_RETRY = {"retry": False}


def registries(url: str) -> list[seawall.Registry]:
    """The two ways a registry builds a client: add() in code, and a configuration."""
    added = seawall.Registry()
    added.add("accounts", base_url=url, policy=seawall.Policy(retry=None))
    configured = seawall.Registry.from_config(
        {"dependencies": {"accounts": {"base_url": url, **NO_RETRY}}}
    )
    return [added, configured]


@pytest.mark.parametrize("built_by", [0, 1], ids=["add", "from_config"])
async def test_one_users_upstream_session_never_reaches_another_user(
    upstream: FaultyUpstream, built_by: int
) -> None:
    upstream.route("/login", Fault(headers={"Set-Cookie": "session=alice-secret; Path=/"}))
    registry = registries(upstream.url)[built_by]
    async with registry:
        accounts = registry.client("accounts")
        # Alice logs in upstream: the upstream sets her session cookie.
        alice = await accounts.get("/login", headers={"Authorization": "Bearer alice"})
        assert alice.cookies["session"] == "alice-secret"  # the response still shows it
        # Bob's request, through the same (shared) client.
        await accounts.get("/me", headers={"Authorization": "Bearer bob"})
        assert not accounts.cookies
    (bob,) = upstream.requests("/me")
    assert bob.header("cookie") is None


async def test_configured_cookies_go_out_and_a_response_cannot_change_them(
    upstream: FaultyUpstream,
) -> None:
    upstream.route("/region", Fault(headers={"Set-Cookie": "region=us; Path=/"}))
    registry = seawall.Registry.from_config(
        {"dependencies": {"geo": {"base_url": upstream.url, "cookies": {"region": "eu"}}}}
    )
    async with registry:
        geo = registry.client("geo")
        await geo.get("/region")
        await geo.get("/region")
    assert [r.header("cookie") for r in upstream.requests("/region")] == ["region=eu"] * 2


async def test_a_jar_given_in_code_is_a_jar_asked_for(upstream: FaultyUpstream) -> None:
    upstream.route("/login", Fault(headers={"Set-Cookie": "session=shared; Path=/"}))
    registry = seawall.Registry()
    jar = CookieJar()
    registry.add("legacy", base_url=upstream.url, cookies=jar)
    async with registry:
        legacy = registry.client("legacy")
        await legacy.get("/login")
        await legacy.get("/me")
    assert upstream.requests("/me")[0].header("cookie") == "session=shared"
    assert [c.name for c in jar] == ["session"]
