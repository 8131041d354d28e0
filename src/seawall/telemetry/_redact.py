"""What of a request may be shown: URLs, error messages and methods, made safe to print.

Pure functions over strings (and :class:`httpx.URL`), with no state and no
imports beyond the standard library at module level, so that config errors,
``repr()``s, spans, metrics and log events can all share them:

* :func:`redact_url` is for telemetry (``url.full``, log events): no userinfo
  at all, and every query value replaced by ``REDACTED`` unless its key is
  allow-listed;
* :func:`mask_url` is for text shown to people (``repr()``, error messages):
  the password of every URL in the text becomes ``[secure]``, as
  ``repr(httpx.URL(...))`` shows it;
* :func:`scrub_message` cleans the message of an underlying error (h11 quotes
  the header value it refuses) before it reaches a span or a log;
* :func:`normalize_method` bounds the ``http.request.method`` label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import unquote

if TYPE_CHECKING:
    import httpx

__all__ = [
    "DEFAULT_QUERY_ALLOWLIST",
    "KNOWN_METHODS",
    "REDACTED",
    "SCRUBBED",
    "mask_url",
    "normalize_method",
    "redact_url",
    "scrub_message",
]

#: What replaces a query value that is not allow-listed.
REDACTED = "REDACTED"
#: What replaces a quoted header value in an error message.
SCRUBBED = "[secret]"

#: Query keys whose values may be shown by default: paging and ordering only.
#: Any other key can carry a credential (``api-key``, ``auth``, ``jwt``,
#: ``sessionid``, ``;token=`` ...) or personal data (``email``, ``q``), and a
#: denylist always misses one. Paging and ordering values are numbers and field
#: names, and they are what tells two slow requests to one path apart. Keys are
#: always kept. Change the list with
#: ``seawall.telemetry.configure(query_allowlist=...)``.
DEFAULT_QUERY_ALLOWLIST: frozenset[str] = frozenset(
    {"page", "per_page", "page_size", "limit", "offset", "sort", "order"}
)

#: The methods of RFC 9110 and RFC 5789; any other is recorded as ``_OTHER``
#: (OpenTelemetry's HTTP semantic conventions), so a client that sends made-up
#: methods cannot multiply the metric series.
KNOWN_METHODS: frozenset[str] = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)

# A query item runs to the next "&" or ";" (some servers split on both, so a
# ";token=..." must not ride along inside an allow-listed value).
_QUERY_ITEM = re.compile(r"[^&;]+")
# A URL's scheme and authority: the authority ends at "/", "?", "#", whitespace
# or a quote (a URL inside a repr()).
_AUTHORITY = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<authority>[^\s/?#'\"<>]*)")
# The word "header", then the rest of the message (h11: "Illegal header value b'...'",
# "illegal header line: bytearray(b'...')").
_HEADER_WORD = re.compile(r"header", re.IGNORECASE)
# A quoted literal as repr() writes it: an optional bytes/raw prefix, single or
# double quotes, backslash escapes.
_QUOTED = re.compile(r"""(?:\b[bBrRuU]{1,2})?(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")""")


@lru_cache(maxsize=16)
def _folded(allowlist: frozenset[str]) -> frozenset[str]:
    return frozenset(key.lower() for key in allowlist)


def _allowlist_of(allowlist: Iterable[str] | str) -> frozenset[str]:
    """Lower-cased allow-listed keys; a lone string is one key, never its letters."""
    if isinstance(allowlist, str):
        return frozenset({allowlist.lower()})
    if not isinstance(allowlist, frozenset):
        allowlist = frozenset(str(key) for key in allowlist)
    return _folded(allowlist)


def _redact_query(query: str, allowed: frozenset[str]) -> str:
    def item(match: re.Match[str]) -> str:
        key, eq, _ = match.group().partition("=")
        if allowed and unquote(key).lower() in allowed:
            return match.group()
        # A bare item ("?abc123") may be the secret itself.
        return f"{key}={REDACTED}" if eq else REDACTED

    return _QUERY_ITEM.sub(item, query)


def redact_url(
    url: httpx.URL | str, allowlist: Iterable[str] | str = DEFAULT_QUERY_ALLOWLIST
) -> str:
    """The URL for telemetry: no ``user:password@``, no fragment, query values redacted.

    Every query value becomes ``REDACTED`` unless its key (compared
    case-insensitively, after percent-decoding) is in *allowlist*; keys and
    separators are kept. A URL that does not parse is shown as ``<invalid url>``.
    """
    import httpx  # local: this module stays importable without touching httpx

    try:
        # str() first: an httpx2.URL (or any other) is not an httpx.URL.
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(str(url))
        if parsed.userinfo or parsed.fragment:
            parsed = parsed.copy_with(username=None, password=None, fragment=None)
    except (httpx.InvalidURL, TypeError, ValueError):
        return "<invalid url>"
    text = str(parsed)
    if not parsed.query:
        return text
    base, _, query = text.partition("?")
    return f"{base}?{_redact_query(query, _allowlist_of(allowlist))}"


def _mask_authority(match: re.Match[str]) -> str:
    scheme, authority = match.group("scheme"), match.group("authority")
    userinfo, at, host = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return match.group()
    username = userinfo.partition(":")[0]
    return f"{scheme}{username}:[secure]@{host}"


def mask_url(text: str) -> str:
    """*text* with the password of every URL in it shown as ``[secure]``.

    ``https://user:pw@a.example/x`` becomes ``https://user:[secure]@a.example/x``,
    as httpx shows a URL in its ``repr()``; the username, host, path and query
    are left as they are. Meant for text people read (``repr()``, error
    messages); telemetry uses :func:`redact_url`.
    """
    if "@" not in text:
        return text
    return _AUTHORITY.sub(_mask_authority, text)


def scrub_message(text: str) -> str:
    """An underlying error's message with header values removed and URL passwords masked.

    Every quoted literal after the word "header" is replaced by ``[secret]``:
    h11 refuses ``Authorization: Bearer abc\\n`` with "Illegal header value
    b'Bearer abc\\\\n'", and that message would otherwise reach the span's
    ``exception`` event. Then :func:`mask_url` is applied.
    """
    found = _HEADER_WORD.search(text)
    if found is not None:
        start = found.start()
        text = text[:start] + _QUOTED.sub(SCRUBBED, text[start:])
    return mask_url(text)


def normalize_method(method: str) -> str:
    """*method* if it is a standard HTTP method (case-sensitive), else ``_OTHER``."""
    return method if method in KNOWN_METHODS else "_OTHER"
