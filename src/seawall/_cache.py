"""The fallback cache: the last good response per request, for stale-if-error.

Purpose-built rather than hishel (evaluated; see docs/fallbacks.md): hishel
serves no stale response on a transport error, keys by URL alone (its default
mode served one user's response to another in our probes), and has no
in-memory storage bounded by entries and bytes. What we keep, and for whom:

* the key is an HMAC, under a per-process random key, of the method, the full
  URL, the request body and every request header except the neutral ones
  (:data:`NEUTRAL_HEADERS`: content negotiation, trace context, framing,
  per-request ids). Credentials travel in many headers (``Authorization``,
  ``Cookie``, ``X-API-Key``, ``X-Auth-Token``...): rather than guess their
  names, every header not known to be neutral tells requests apart. No
  header value, URL or body is stored, only the digest;
* each key holds one response, served back only if the request headers its
  ``Vary`` names have the same values (compared as an HMAC too);
* never kept: ``no-store``, ``must-revalidate``/``proxy-revalidate``,
  ``Vary: *``, ``206 Partial Content``, an answer to a request with
  ``Range``, a request whose body was streamed (it cannot be keyed), and a
  ``Cache-Control: private`` answer to a request that carries nothing but
  neutral headers (the origin says it is someone's, the cache cannot tell
  whose). ``Set-Cookie`` is never replayed;
* an LRU bounded by ``max_entries`` and ``max_bytes`` of bodies.

``no-cache`` responses are kept: serving one only when the origin cannot be
reached is this cache's whole purpose, and many APIs send ``no-cache`` by
default.
"""

from __future__ import annotations

import hmac
import os
from collections import OrderedDict
from dataclasses import dataclass

import httpx

from ._clock import Clock
from ._deadline import forward_header

__all__ = ["NEUTRAL_HEADERS", "ResponseCache"]

_SECRET = os.urandom(32)

#: Request headers that never tell one user's request from another's, left out
#: of the cache key (the response's ``Vary`` still applies to them). Every
#: other header is part of the key. The ASGI middleware's deadline header
#: (``forward_header``) is neutral too, whatever its name.
NEUTRAL_HEADERS = frozenset(
    {
        # content negotiation: governed by the response's Vary
        b"accept",
        b"accept-charset",
        b"accept-encoding",
        b"accept-language",
        b"user-agent",
        # trace context: W3C, B3, Jaeger, AWS X-Ray, Sentry
        b"traceparent",
        b"tracestate",
        b"baggage",
        b"b3",
        b"x-b3-traceid",
        b"x-b3-spanid",
        b"x-b3-parentspanid",
        b"x-b3-sampled",
        b"x-b3-flags",
        b"uber-trace-id",
        b"x-amzn-trace-id",
        b"sentry-trace",
        # per-request ids and deadlines
        b"x-request-id",
        b"x-correlation-id",
        b"idempotency-key",
        b"request-timeout",
        # request cache directives, framing and hop-by-hop headers
        b"cache-control",
        b"pragma",
        b"connection",
        b"keep-alive",
        b"te",
        b"expect",
        b"content-length",
        b"transfer-encoding",
    }
)
# Framing headers are recomputed for the replayed body; Set-Cookie is never
# replayed (it would hand one caller's upstream session to the next).
# Keyed, but saying nothing of who asks: a request with nothing else names no one.
_IMPERSONAL = frozenset({b"host", b"content-type"})
_DROP = frozenset(
    {b"transfer-encoding", b"connection", b"keep-alive", b"age", b"set-cookie", b"set-cookie2"}
)


def _key_message(request: httpx.Request) -> tuple[bytes, bool] | None:
    """What a request's key is a digest of, and whether it carried a header that
    may say who asks (the local key and the shared tier's both digest it).

    None for a request that must never meet the cache: it asks for a range,
    or its body was streamed and cannot be hashed.
    """
    try:
        body = request.content
    except httpx.RequestNotRead:
        return None
    deadline_header = forward_header.get().lower().encode("latin-1")
    keyed = []
    personal = False
    for name, value in request.headers.raw:
        lower = name.lower()
        if lower == b"range":
            return None
        if lower not in NEUTRAL_HEADERS and lower != deadline_header:
            keyed.append(b"%d:%s:%d:%s" % (len(lower), lower, len(value), value))
            personal = personal or lower not in _IMPERSONAL
    keyed.sort()
    url = request.url
    scheme, host, port, target = url.raw_scheme, url.raw_host, url.port, url.raw_path
    # Every part length-prefixed, so no two requests share a message.
    parts = [request.method.encode("ascii"), scheme, host, b"%d" % (port or 0), target, body]
    parts += keyed
    return b"".join(b"%d:%s" % (len(part), part) for part in parts), personal


def _key(request: httpx.Request) -> tuple[bytes, bool] | None:
    """The request's key, and whether it may say who asks (None: never cached)."""
    found = _key_message(request)
    if found is None:
        return None
    # One one-shot HMAC (hmac.digest runs in C: a fraction of hmac.new).
    return hmac.digest(_SECRET, found[0], "sha256"), found[1]


#: The digest of an empty Vary (most responses): no HMAC to compute.
_NO_VARY = b""


def _vary_digest(request: httpx.Request, names: tuple[str, ...], secret: bytes = _SECRET) -> bytes:
    """A digest of *request*'s values of the *names* a response varies on."""
    if not names:
        return _NO_VARY
    values = []
    for name in names:
        value = request.headers.get(name)
        values.append(b"-" if value is None else b"+%d:%s" % (len(value), value.encode()))
    return hmac.digest(secret, b"".join(values), "sha256")


@dataclass(frozen=True, slots=True)
class _Entry:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    stored_at: float
    vary: tuple[str, ...]
    vary_digest: bytes


class ResponseCache:
    """Last-good responses of one dependency, bounded by entries and bytes."""

    __slots__ = ("_bytes", "_clock", "_entries", "max_bytes", "max_entries")

    def __init__(self, *, max_entries: int, max_bytes: int, clock: Clock) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        # HMAC of (method, URL, body, non-neutral headers) -> entry
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Bytes of bodies held."""
        return self._bytes

    def store(
        self, request: httpx.Request, status: int, headers: httpx.Headers, body: bytes
    ) -> None:
        """Keep a successful response (the caller checked method and status)."""
        self._store(request, _key_message(request), status, headers, body)

    def _store(
        self,
        request: httpx.Request,
        found: tuple[bytes, bool] | None,
        status: int,
        headers: httpx.Headers,
        body: bytes,
    ) -> None:
        """:meth:`store`, given *request*'s :func:`_key_message` (a shared tier needs it too)."""
        if found is None or len(body) > self.max_bytes or status == 206:
            return
        key, personal = hmac.digest(_SECRET, found[0], "sha256"), found[1]
        # One pass over the raw headers for what we need of them.
        kept = []
        cache_control = vary_header = b""
        for k, v in headers.raw:
            name = k.lower()
            if name == b"cache-control":
                cache_control += b"," + v.lower()
            elif name == b"vary":
                vary_header += b"," + v.lower()
            if name not in _DROP:
                kept.append((k, v))
        # no-store: never keep it. must-revalidate (and proxy-revalidate): the
        # origin forbids serving it stale, which is all this cache ever does.
        if b"no-store" in cache_control or b"revalidate" in cache_control:
            return
        # private: one user's answer. The key already holds every header that
        # could say whose; with none, the cache cannot tell, so it keeps nothing.
        if b"private" in cache_control and not personal:
            return
        vary_names = {n.strip() for n in vary_header.decode("latin-1").split(",") if n.strip()}
        if "*" in vary_names:
            return
        vary = tuple(sorted(vary_names))
        vary_digest = _vary_digest(request, vary)
        now = self._clock.now()
        old = self._entries.get(key)
        if (
            old is not None
            and old.status == status
            and old.body == body
            and old.headers == tuple(kept)
            and old.vary == vary
            and old.vary_digest == vary_digest
        ):
            # The same answer again (the common case): only its age and its
            # place in the LRU change.
            self._entries[key] = _Entry(status, old.headers, old.body, now, vary, vary_digest)
            self._entries.move_to_end(key)
            return
        # One entry per key: a newer response replaces an older one even when
        # its Vary differs, so the cache never serves a variant the origin has
        # since stopped sending.
        if old is not None:
            del self._entries[key]
            self._bytes -= len(old.body)
        self._entries[key] = _Entry(status, tuple(kept), body, now, vary, vary_digest)
        self._bytes += len(body)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: bytes) -> None:
        entry = self._entries.pop(key)
        self._bytes -= len(entry.body)

    async def fetch(self, request: httpx.Request, max_age: float) -> httpx.Response | None:
        """:meth:`lookup`, for a call that needs its fallback now. A shared tier
        (seawall.redis) overrides it to read Redis, within its budget, on a miss."""
        return self.lookup(request, max_age)

    def lookup(self, request: httpx.Request, max_age: float) -> httpx.Response | None:
        """The stored response for *request* if younger than *max_age* seconds, with ``Age``."""
        found = _key(request)
        if found is None:
            return None
        key = found[0]
        entry = self._entries.get(key)
        if entry is None:
            return None
        if not hmac.compare_digest(_vary_digest(request, entry.vary), entry.vary_digest):
            return None
        age = self._clock.now() - entry.stored_at
        if age >= max_age:
            return None
        self._entries.move_to_end(key)
        headers = [*entry.headers, (b"Age", str(int(age)).encode())]
        # Not ``content=``: that response would be read and closed already,
        # and the client could not time it (``response.elapsed``) on reading.
        return httpx.Response(
            entry.status, headers=headers, stream=httpx.ByteStream(entry.body), request=request
        )
