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
_CREDENTIAL_HEADERS = frozenset({b"authorization", b"cookie", b"proxy-authorization"})
# Framing headers are recomputed for the replayed body.
_DROP = frozenset({b"transfer-encoding", b"connection", b"keep-alive", b"age"})


def _credentials(request: httpx.Request) -> bytes | None:
    # One pass over the raw headers: httpx's Headers.get scans them all per name.
    # Names included: the same value as a cookie and as a bearer token differ.
    values = sorted(
        k.lower() + b":" + v for k, v in request.headers.raw if k.lower() in _CREDENTIAL_HEADERS
    )
    if not values:
        return None
    return hmac.new(_SECRET, b"\x00".join(values), hashlib.sha256).digest()


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
        # (method, url, credentials fingerprint) -> entry
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
        if len(body) > self.max_bytes:
            return
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
        vary_names = {n.strip() for n in vary_header.decode("latin-1").split(",") if n.strip()}
        if "*" in vary_names:
            return
        # One entry per (method, URL, credentials): a newer response replaces an
        # older one even when its Vary differs, so the cache never serves a
        # variant the origin has since stopped sending. O(1) per call.
        key = (request.method, str(request.url), _credentials(request))
        now = self._clock.now()
        old = self._entries.get(key)
        if (
            old is not None
            and old.status == status
            and old.body == body
            and tuple(kept) == old.headers
            and all(
                request.headers.get(name) == value
                for name, value in zip(old.vary, old.vary_values, strict=True)
            )
        ):
            # The same answer again (the common case): only its age and
            # its place in the LRU change.
            self._entries[key] = _Entry(
                status, old.headers, old.body, now, old.vary, old.vary_values, old.credentials
            )
            self._entries.move_to_end(key)
            return
        vary = tuple(sorted(vary_names))
        entry = _Entry(
            status=status,
            headers=tuple(kept),
            body=body,
            stored_at=now,
            vary=vary,
            vary_values=tuple(request.headers.get(name) for name in vary),
            credentials=key[2],
        )
        if old is not None:
            del self._entries[key]
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
        key = (request.method, str(request.url), _credentials(request))
        entry = self._entries.get(key)
        if entry is None:
            return None
        if tuple(request.headers.get(name) for name in entry.vary) != entry.vary_values:
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
