"""seawall.telemetry._redact: what of a URL, an error message or a method may be shown.

Issue 12, item 2 (query redaction by allowlist, URL masking, error-message
scrubbing) and item 15 (bounded method labels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import h11
import httpx
import pytest
from structlog.testing import capture_logs

import seawall
import seawall.telemetry
from seawall.telemetry import _otel
from seawall.telemetry._redact import (
    DEFAULT_QUERY_ALLOWLIST,
    KNOWN_METHODS,
    mask_url,
    normalize_method,
    redact_url,
    scrub_message,
)

SECRET = "S3CRET"


@pytest.fixture(autouse=True)
def _restore_telemetry_settings() -> Iterator[None]:
    previous = seawall.telemetry.settings()
    yield
    seawall.telemetry.configure(
        **{f.name: getattr(previous, f.name) for f in dataclasses.fields(previous)}
    )


# ---------------------------------------------------------------------------
# redact_url: every query value, unless allow-listed


@pytest.mark.parametrize(
    "query",
    [
        # The keys the old denylist missed, each of them a real credential carrier.
        pytest.param(f"api-key={SECRET}", id="api-key"),
        pytest.param(f"auth={SECRET}", id="auth"),
        pytest.param(f"auth_token={SECRET}", id="auth_token"),
        pytest.param(f"jwt={SECRET}", id="jwt"),
        pytest.param(f"sessionid={SECRET}", id="sessionid"),
        pytest.param(f"passwd={SECRET}", id="passwd"),
        pytest.param(f"page=2;token={SECRET}", id="semicolon-token"),
        pytest.param(f"x=1&{SECRET}", id="bare-value"),
        pytest.param(f"X-Custom-Signature={SECRET}", id="any-key"),
    ],
)
def test_no_query_value_reaches_telemetry_unless_allow_listed(query: str) -> None:
    url = httpx.URL(f"https://api.example/v1?{query}")
    shown = _otel.redact_url(url)
    assert SECRET not in shown
    assert shown.startswith("https://api.example/v1?")
    assert "REDACTED" in shown


def test_keys_and_separators_are_kept_and_paging_is_allowed_by_default() -> None:
    url = "https://api.example/v1?page=2&limit=50&email=a%40b.example;token=t&flag"
    assert redact_url(url) == (
        "https://api.example/v1?page=2&limit=50&email=REDACTED;token=REDACTED&REDACTED"
    )
    assert {"page", "limit", "offset"} <= DEFAULT_QUERY_ALLOWLIST
    assert not {"token", "key", "q", "email"} & DEFAULT_QUERY_ALLOWLIST


def test_userinfo_and_fragment_are_dropped() -> None:
    shown = redact_url(httpx.URL(f"https://alice:{SECRET}@api.example:8443/v1#{SECRET}"))
    assert shown == "https://api.example:8443/v1"


@pytest.mark.parametrize(
    ("allowlist", "expected"),
    [
        pytest.param(frozenset({"Region"}), "region=eu&page=REDACTED", id="case-insensitive"),
        pytest.param({"region"}, "region=eu&page=REDACTED", id="a-plain-set"),
        pytest.param("region", "region=eu&page=REDACTED", id="one-string-is-one-key"),
        pytest.param((), "region=REDACTED&page=REDACTED", id="nothing-allowed"),
    ],
)
def test_the_allowlist(allowlist: object, expected: str) -> None:
    url = "https://api.example/v1?region=eu&page=3"
    assert redact_url(url, allowlist) == f"https://api.example/v1?{expected}"  # type: ignore[arg-type]


def test_a_percent_encoded_key_matches_its_decoded_name() -> None:
    assert redact_url("https://a.example/?pa%67e=3", {"page"}) == "https://a.example/?pa%67e=3"


def test_an_unparseable_url_is_not_shown() -> None:
    assert redact_url(f"http://[::1{SECRET}") == "<invalid url>"


def test_query_allowlist_is_a_telemetry_setting() -> None:
    url = httpx.URL(f"https://api.example/v1?region=eu&page=2&token={SECRET}")
    assert _otel.redact_url(url) == ("https://api.example/v1?region=REDACTED&page=2&token=REDACTED")
    seawall.telemetry.configure(query_allowlist=frozenset({"region"}))
    assert seawall.telemetry.settings().query_allowlist == frozenset({"region"})
    assert _otel.redact_url(url) == (
        "https://api.example/v1?region=eu&page=REDACTED&token=REDACTED"
    )


@pytest.mark.anyio
async def test_the_call_log_event_shows_no_query_secret() -> None:
    # Through a real client: a failed call is logged (at info) with its URL.
    transport = httpx.MockTransport(lambda request: httpx.Response(500))
    policy = seawall.Policy(retry=None, breaker=None)
    async with seawall.ResilientClient(
        "redact-log", policy=policy, base_url="https://api.example", transport=transport
    ) as client:
        with capture_logs() as logs:
            await client.get("/v1", params={"jwt": SECRET, "sessionid": SECRET, "page": "4"})
    calls = [e for e in logs if e["event"] == "seawall.call"]
    assert calls, logs
    assert calls[0]["url"] == "https://api.example/v1?jwt=REDACTED&sessionid=REDACTED&page=4"


# ---------------------------------------------------------------------------
# mask_url: passwords in text people read


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            f"https://alice:{SECRET}@a.example/x?y=1",
            "https://alice:[secure]@a.example/x?y=1",
            id="one-url",
        ),
        pytest.param(
            f"circuit open for 'http://u:{SECRET}@a.example' and http://b.example",
            "circuit open for 'http://u:[secure]@a.example' and http://b.example",
            id="inside-a-message",
        ),
        pytest.param(
            f"('https://u:{SECRET}@a.example', \"https://v:{SECRET}@b.example:8080/p\")",
            "('https://u:[secure]@a.example', \"https://v:[secure]@b.example:8080/p\")",
            id="in-a-repr",
        ),
        pytest.param(
            f"https://u:p@{SECRET}@a.example", "https://u:[secure]@a.example", id="unencoded-at"
        ),
        pytest.param("https://user@a.example", "https://user@a.example", id="no-password"),
        pytest.param("mailto:someone@a.example", "mailto:someone@a.example", id="not-a-url"),
        pytest.param("", "", id="empty"),
    ],
)
def test_mask_url(text: str, expected: str) -> None:
    assert mask_url(text) == expected


def test_mask_url_shows_what_httpx_shows() -> None:
    url = f"https://alice:{SECRET}@a.example/x"
    assert repr(httpx.URL(url)) == f"URL('{mask_url(url)}')"


# ---------------------------------------------------------------------------
# scrub_message: header values out of underlying errors


def h11_refusal(value: str) -> str:
    """The message h11 raises for a header value it will not send."""
    conn = h11.Connection(h11.CLIENT)
    with pytest.raises(h11.LocalProtocolError) as excinfo:
        conn.send(
            h11.Request(method="GET", target="/", headers=[("Host", "a"), ("Authorization", value)])
        )
    return str(excinfo.value)


def test_an_h11_header_refusal_loses_the_header_value() -> None:
    message = h11_refusal(f"Bearer {SECRET}\n")
    assert SECRET in message  # the leak this guards against
    scrubbed = scrub_message(message)
    assert SECRET not in scrubbed
    assert scrubbed == "Illegal header value [secret]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            f"illegal header line: bytearray(b'Set-Cookie: s={SECRET}\\x00')",
            "illegal header line: bytearray([secret])",
            id="h11-header-line",
        ),
        pytest.param(
            f'Header "X-Api-Key" has value "{SECRET}"',
            "Header [secret] has value [secret]",
            id="double-quotes",
        ),
        pytest.param(
            f"bad header value 'a\\'{SECRET}'", "bad header value [secret]", id="escaped-quote"
        ),
        pytest.param(
            f"connect to https://u:{SECRET}@a.example failed",
            "connect to https://u:[secure]@a.example failed",
            id="url-password",
        ),
        pytest.param(
            "[Errno 111] Connection refused", "[Errno 111] Connection refused", id="plain"
        ),
    ],
)
def test_scrub_message(text: str, expected: str) -> None:
    assert scrub_message(text) == expected


# ---------------------------------------------------------------------------
# normalize_method: bounded metric labels


@pytest.mark.parametrize("method", sorted(KNOWN_METHODS))
def test_standard_methods_are_kept(method: str) -> None:
    assert normalize_method(method) == method


@pytest.mark.parametrize("method", ["get", "Post", "PURGE", "PROPFIND", "", "G ET", "X" * 1000])
def test_other_methods_are_other(method: str) -> None:
    assert normalize_method(method) == "_OTHER"


def test_known_methods_are_the_semantic_conventions_list() -> None:
    assert (
        frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
        == KNOWN_METHODS
    )
