"""The fallback cache: the last good response per request, for stale-if-error.

Purpose-built rather than hishel (evaluated; see docs/fallbacks.md): hishel
serves no stale response on a transport error, keys by URL alone (its default
mode served one user's response to another in our probes), and has no
in-memory storage bounded by entries and bytes. What we keep:

* a key of method and full URL; each key holds variants told apart by the
  request headers the response's ``Vary`` names and by a fingerprint of the
  request's credentials (``Authorization``, ``Cookie``, ``Proxy-Authorization``),
  an HMAC under a per-process random key, so no secret is stored;
* responses marked ``no-store``, ``must-revalidate`` or ``Vary: *`` are never
  kept (``no-cache`` responses are: serving one only when the origin cannot be
  reached is this cache's whole purpose, and many APIs send ``no-cache`` by
  default);
* an LRU bounded by ``max_entries`` and ``max_bytes`` of bodies.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from dataclasses import dataclass

import httpx

from ._clock import Clock

__all__ = ["ResponseCache"]

_SECRET = os.urandom(32)
_CREDENTIAL_HEADERS = ("authorization", "cookie", "proxy-authorization")
# Framing headers are recomputed for the replayed body.
_DROP = frozenset({"transfer-encoding", "connection", "keep-alive", "age"})


def _credentials(request: httpx.Request) -> bytes | None:
    values = [request.headers.get(h) for h in _CREDENTIAL_HEADERS]
    if not any(values):
        return None
    material = "\x00".join(v or "" for v in values).encode()
    return hmac.new(_SECRET, material, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class _Entry:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    stored_at: float
    vary: tuple[str, ...]
    vary_values: tuple[str | None, ...]
    credentials: bytes | None


class ResponseCache:
    """Last-good responses of one dependency, bounded by entries and bytes."""

    __slots__ = ("_bytes", "_clock", "_entries", "max_bytes", "max_entries")

    def __init__(self, *, max_entries: int, max_bytes: int, clock: Clock) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        # (method, url, variant id) -> entry; the variant id is (vary values, credentials)
        self._entries: OrderedDict[tuple[object, ...], _Entry] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Bytes of bodies held."""
        return self._bytes

    @staticmethod
    def storable(response_headers: httpx.Headers) -> bool:
        cache_control = response_headers.get("cache-control", "").lower()
        # no-store: never keep it. must-revalidate (and proxy-revalidate): the
        # origin forbids serving it stale, which is all this cache ever does.
        if "no-store" in cache_control or "revalidate" in cache_control:
            return False
        return bool(response_headers.get("vary", "").strip() != "*")

    def store(
        self, request: httpx.Request, status: int, headers: httpx.Headers, body: bytes
    ) -> None:
        """Keep a successful response (the caller checked method and status)."""
        if not self.storable(headers) or len(body) > self.max_bytes:
            return
        vary = tuple(
            sorted({v.strip().lower() for v in headers.get("vary", "").split(",") if v.strip()})
        )
        vary_values = tuple(request.headers.get(name) for name in vary)
        credentials = _credentials(request)
        entry = _Entry(
            status=status,
            headers=tuple(
                (k, v) for k, v in headers.raw if k.lower().decode("latin-1") not in _DROP
            ),
            body=body,
            stored_at=self._clock.now(),
            vary=vary,
            vary_values=vary_values,
            credentials=credentials,
        )
        base = (request.method, str(request.url))
        # One entry per (method, URL, credentials): a newer response replaces an
        # older one even when its Vary differs, so the cache never serves a
        # variant the origin has since stopped sending.
        key = (*base, credentials, vary_values)
        stale = [k for k in self._entries if k[:3] == (*base, credentials) and k != key]
        for k in stale:
            self._drop(k)
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old.body)
        self._entries[key] = entry
        self._bytes += len(body)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[object, ...]) -> None:
        entry = self._entries.pop(key)
        self._bytes -= len(entry.body)

    def lookup(self, request: httpx.Request, max_age: float) -> httpx.Response | None:
        """The stored response for *request* if younger than *max_age* seconds, with ``Age``."""
        credentials = _credentials(request)
        prefix = (request.method, str(request.url), credentials)
        now = self._clock.now()
        for key, entry in reversed(self._entries.items()):
            if key[:3] != prefix:
                continue
            if tuple(request.headers.get(name) for name in entry.vary) != entry.vary_values:
                continue
            age = now - entry.stored_at
            if age >= max_age:
                return None
            self._entries.move_to_end(key)
            headers = [*entry.headers, (b"Age", str(int(age)).encode())]
            # Not ``content=``: that response would be read and closed already,
            # and the client could not time it (``response.elapsed``) on reading.
            return httpx.Response(
                entry.status, headers=headers, stream=httpx.ByteStream(entry.body), request=request
            )
        return None
