"""The shared fallback cache: a Redis tier under the local stale-if-error cache.

``Shared(fallback=True)``. The local cache keeps its rules (``_cache``); the
shared tier adds its own, stricter ones:

* never kept: ``no-store``, ``private``, ``must-revalidate``, ``Vary: *``, a
  response carrying ``Set-Cookie``, a body over 256 KiB, a request with
  ``Range`` or a streamed body;
* a request carrying anything that may say who asks (``Authorization``,
  ``Cookie``, an API key header: every header not known to be neutral, as the
  local cache decides) is shared only with ``cache_secret`` set, and then the
  entry's key is an HMAC-SHA256 under that secret: no credential, URL or
  header value reaches Redis, only digests;
* the entry lives ``stale_if_error`` seconds (its Redis TTL, so its age
  does not depend on any replica's clock).

Writes go in the background, coalesced (one per key per
``max(5 s, stale_if_error / 10)``) and bounded (at most 64 waiting; the
rest are dropped and counted). Reads happen only when a fallback is
needed and the local tier missed (:meth:`SharedResponseCache.fetch`, called
by the fallback): the failed call waits at most ``budget`` for Redis (at
most 4 reads at a time, and none for a key that missed a moment ago); a read
later than that still fills the local tier, for the next failure.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import struct
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

import httpx

from .._cache import _DROP, ResponseCache, _Entry, _key, _key_message, _vary_digest
from .._clock import Clock
from ._state import Unavailable

if TYPE_CHECKING:
    from ._state import SharedState

__all__ = ["MAX_BODY", "SharedResponseCache"]

#: The largest body the shared tier keeps.
MAX_BODY = 256 * 1024
#: Writes waiting to be sent, at most; reads in flight, at most.
MAX_PENDING = 64
MAX_READS = 4
_MAGIC = b"SW1"


class SharedResponseCache(ResponseCache):
    """The local cache of a dependency, with a shared tier on the state backend."""

    __slots__ = (
        "_backend",
        "_coalesce",
        "_dependency",
        "_missed",
        "_pending",
        "_reads",
        "_secret",
        "_stale",
        "_writer",
        "_written",
        "drops",
    )

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        clock: Clock,
        dependency: str,
        stale_if_error: float,
        state: SharedState,
        secret: bytes | None,
    ) -> None:
        super().__init__(max_entries=max_entries, max_bytes=max_bytes, clock=clock)
        self._backend = state
        self._dependency = dependency
        self._stale = stale_if_error
        self._secret = secret
        self._coalesce = max(5.0, stale_if_error / 10)
        self._written: OrderedDict[str, float] = OrderedDict()
        self._missed: OrderedDict[str, float] = OrderedDict()
        self._pending: deque[tuple[str, bytes]] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._reads = 0
        #: Writes dropped because too many were waiting.
        self.drops = 0

    # -- keys ------------------------------------------------------------------------

    def shared_key(self, request: httpx.Request) -> str | None:
        """The Redis key of *request*'s entry, or None if it must not be shared."""
        return self._shared_key(_key_message(request))

    def _shared_key(self, found: tuple[bytes, bool] | None) -> str | None:
        """The Redis key for a request's :func:`_key_message` (the local key's, under
        the shared secret), or None if it must not be shared."""
        if found is None:
            return None
        message, personal = found
        if personal and self._secret is None:
            return None  # someone's own answer: shared only under a cache_secret
        digest = hmac.digest(self._key_secret(), message, "sha256").hex()
        return f"seawall:{self._backend.namespace}:c:{self._dependency}:{digest}"

    def _key_secret(self) -> bytes:
        if self._secret is not None:
            return self._secret
        return b"seawall-shared-cache:" + self._backend.namespace.encode()

    def _shared_vary(self, request: httpx.Request, names: tuple[str, ...]) -> str:
        return _vary_digest(request, names, self._key_secret()).hex()

    # -- writing -----------------------------------------------------------------------

    def store(
        self, request: httpx.Request, status: int, headers: httpx.Headers, body: bytes
    ) -> None:
        found = _key_message(request)  # once, for both tiers' keys
        self._store(request, found, status, headers, body)
        if self._backend.connected:
            self._share(request, found, status, headers, body)

    def _share(
        self,
        request: httpx.Request,
        found: tuple[bytes, bool] | None,
        status: int,
        headers: httpx.Headers,
        body: bytes,
    ) -> None:
        if len(body) > MAX_BODY or status == 206:
            return
        kept = []
        cache_control = vary_header = b""
        for k, v in headers.raw:
            name = k.lower()
            if name in (b"set-cookie", b"set-cookie2"):
                return  # never in a shared cache
            if name == b"cache-control":
                cache_control += b"," + v.lower()
            elif name == b"vary":
                vary_header += b"," + v.lower()
            if name not in _DROP:
                kept.append([k.decode("latin-1"), v.decode("latin-1")])
        if any(word in cache_control for word in (b"no-store", b"private", b"revalidate")):
            return
        vary_names = {n.strip() for n in vary_header.decode("latin-1").split(",") if n.strip()}
        if "*" in vary_names:
            return
        key = self._shared_key(found)
        if key is None:
            return
        now = self._clock.now()
        last = self._written.get(key)
        if last is not None and now - last < self._coalesce:
            return
        if len(self._pending) >= MAX_PENDING:
            self.drops += 1
            self._backend.local_decision("cache_drop")
            return
        vary = tuple(sorted(vary_names))
        meta = json.dumps(
            {"s": status, "h": kept, "v": vary, "d": self._shared_vary(request, vary)}
        ).encode()
        self._written[key] = now
        self._written.move_to_end(key)
        while len(self._written) > self.max_entries:
            self._written.popitem(last=False)
        self._pending.append((key, _MAGIC + struct.pack(">I", len(meta)) + meta + body))
        if self._writer is None:
            self._writer = self._backend.spawn(self._write())

    async def _write(self) -> None:
        backend = self._backend
        ttl_ms = max(1, round(self._stale * 1000))
        try:
            while self._pending and backend.connected:
                batch = [self._pending.popleft() for _ in range(min(16, len(self._pending)))]
                try:
                    await backend.cache_put(batch, ttl_ms)
                except Unavailable:
                    return
        finally:
            self._writer = None
            self._pending.clear()

    # -- reading -----------------------------------------------------------------------

    async def fetch(self, request: httpx.Request, max_age: float) -> httpx.Response | None:
        """The local tier, else the shared one, waiting at most ``budget`` for Redis."""
        found = super().lookup(request, max_age)
        if found is not None or not self._backend.connected:
            return found
        key = self.shared_key(request)
        if key is None or self._missed_lately(key) or self._reads >= MAX_READS:
            return None  # Redis had nothing a moment ago, or enough reads are out
        self._reads += 1
        task = self._backend.spawn(self._read(key, request))
        task.add_done_callback(self._read_done)
        got = await self._backend.within_budget(task, "cache", self._dependency)
        return super().lookup(request, max_age) if got else None

    def _missed_lately(self, key: str) -> bool:
        at = self._missed.get(key)
        return at is not None and self._clock.now() - at < self._coalesce

    def _read_done(self, task: asyncio.Task[bool]) -> None:
        self._reads -= 1
        if not task.cancelled():
            task.exception()  # retrieved: Unavailable is counted by the state

    async def _read(self, key: str, request: httpx.Request) -> bool:
        """Fill the local tier from the shared one; True if an entry was found."""
        value, pttl = await self._backend.cache_get(key)
        if value is None or pttl <= 0 or not value.startswith(_MAGIC):
            self._missed[key] = self._clock.now()
            while len(self._missed) > self.max_entries:
                self._missed.popitem(last=False)
            return False
        (size,) = struct.unpack(">I", value[3:7])
        meta: dict[str, Any] = json.loads(value[7 : 7 + size])
        body = value[7 + size :]
        vary = tuple(meta["v"])
        if not hmac.compare_digest(self._shared_vary(request, vary), meta["d"]):
            return False  # another variant
        found = _key(request)
        if found is None:
            return False
        age = max(0.0, self._stale - pttl / 1000)
        headers = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in meta["h"])
        entry = _Entry(
            meta["s"], headers, body, self._clock.now() - age, vary, _vary_digest(request, vary)
        )
        local = found[0]
        old = self._entries.get(local)
        if old is not None:
            if old.stored_at >= entry.stored_at:
                return True  # the local tier has a newer answer meanwhile
            del self._entries[local]
            self._bytes -= len(old.body)
        self._entries[local] = entry
        self._bytes += len(body)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        return True
