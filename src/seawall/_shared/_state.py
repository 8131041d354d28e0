"""Shared state: this replica's view of the others, and the one task that syncs it.

A :class:`SharedState` belongs to one :class:`~seawall.Registry`. Entering the
registry registers the replica and starts the sync task; every
``sync_interval`` it sends, in one script call, a summary of each shared
dependency (breaker evidence, slots released, calls in flight, demand) and
gets back the aggregates of all live replicas, which the dependency's shared
primitives then act on. Calls never wait on that task.

Redis informs decisions and never fails a call. Every operation goes through
a breaker on the backend itself (3 consecutive errors or timeouts open it
for 2 s, doubling up to 30 s): while it is not closed the state is
*degraded*, calls take local decisions without waiting on Redis at all, and
only the sync task probes. A hot-path wait (a grant, a reservation, a cache
read) lasts at most ``budget``; the operation itself is never cancelled (a
cancelled redis-py command drops its connection): it finishes in the
background and its result is used or handed back.

The backend (``seawall.redis.RedisState``) supplies the I/O: ``_open``,
``_close``, ``_eval`` and the cache's ``_cache_get``/``_cache_put``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import sniffio

from .._breaker import CLOSED, Breaker, BreakerState, Transition
from .._clock import MONOTONIC, Clock
from .._config import CircuitBreaker
from .._decision import mark_shared_local
from .._exceptions import RejectedError
from . import _telemetry
from ._lua import (
    AGGREGATE,
    ENTRY,
    GCRA,
    LEAVE,
    OVERRIDES,
    PROBE,
    SLOTS,
    SUMMARY,
    SYNC,
    Script,
)

if TYPE_CHECKING:
    from .._registry import Registry
    from .._runtime import Runtime

__all__ = ["DependencyView", "SharedState", "Unavailable"]

T = TypeVar("T")

#: The breaker on the backend: 3 consecutive errors or timeouts open it for
#: 2 s, growing to 30 s; one probe (a sync) decides.
HEALTH_BREAKER = CircuitBreaker(
    window="count",
    window_size=3,
    minimum_calls=3,
    failure_rate_threshold=1.0,
    slow_call_duration=3600.0,
    open_duration=2.0,
    open_duration_multiplier=2.0,
    max_open_duration=30.0,
    half_open_calls=1,
)

#: One-shot overrides (reset, forced_closed) stay visible this many leases.
_ONE_SHOT = frozenset({"reset", "forced_closed"})


class Unavailable(Exception):
    """A backend operation that did not run (degraded) or failed."""


@dataclass(frozen=True, slots=True)
class DependencyView:
    """The last synced aggregates of one shared dependency, across live replicas."""

    live: int = 0
    tripped: int = 0
    evidence: int = 0
    slots: int = 0
    pressure: bool = False
    #: The cluster override in force: ``forced_open``, ``disabled``, or a
    #: one-shot ``reset``/``forced_closed``; None without one.
    override: str | None = None
    override_id: int = 0
    #: Seconds until the override ends (None: until replaced).
    override_left: float | None = None


_NO_VIEW = DependencyView()


class SharedState:
    """The state backend of one registry (see ``seawall.redis.RedisState``)."""

    backend = "redis"

    def __init__(
        self,
        *,
        namespace: str,
        budget: float,
        sync_interval: float,
        command_timeout: float,
        lease_ttl: float,
        time_source: Literal["server", "client"],
        clock: Clock | None,
    ) -> None:
        self.namespace = namespace
        self.budget = budget
        self.sync_interval = sync_interval
        self.command_timeout = command_timeout
        self.lease_ttl = lease_ttl
        self.time_source = time_source
        self._clock_given = clock
        self.clock: Clock = clock or MONOTONIC
        #: ``host:pid:random``: this process's name among the replicas.
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.prefix = "{seawall:" + namespace + "}"
        #: "stopped" (not entered), "connected" or "degraded".
        self.status = "stopped"
        #: Whether calls may wait on the backend (registered, and its breaker closed).
        self.connected = False
        #: Live replicas at the last sync (at least 1: this one).
        self.live_replicas = 1
        self.counters = _telemetry.Counters()
        self._registry: Registry | None = None
        self._registered = False
        self._epoch = ""
        self._views: dict[str, DependencyView] = {}
        self._asks: dict[str, tuple[str, int]] = {}
        # What the last syncs carried, per dependency (a change is sent, the rest is not).
        self._acked: dict[str, tuple[int, ...]] = {}
        self._dirty: set[str] = set()
        self._sending: list[str] = []
        # The generation of each aggregate as last seen.
        self._generations: dict[str, float] = {}
        self._last_full = -math.inf
        self._last_sync: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._ops: set[asyncio.Task[Any]] = set()
        self._wake: asyncio.Event | None = None
        self._sync_lock: asyncio.Lock | None = None
        self._stopping = False
        self._health = self._new_health()
        self._degraded_reason: str | None = None
        self._said_degraded = False
        #: Keys the shared cache entries of requests with credentials (None: not shared).
        self.cache_secret: bytes | None = None
        #: Whether the server has a native GCRA command (probed after the first sync
        #: that works, and again once the scripts were loaded anew); the shared rate
        #: limit then uses it.
        self.native_gcra = False
        self._probe_due = False

    def _new_health(self) -> Breaker:
        health = Breaker(
            HEALTH_BREAKER, clock=self.clock, dependency=f"seawall.shared:{self.namespace}"
        )
        health.on_transition(self._on_health)
        return health

    # -- the backend's part ----------------------------------------------------------

    async def _open(self) -> None:
        """Get the client ready (no I/O needed)."""
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    async def _eval(self, script: Script, args: Sequence[str | int | float | bytes]) -> Any:
        """EVALSHA *script* with ``KEYS[1]`` = the namespace's tag (loaded again on NOSCRIPT)."""
        raise NotImplementedError

    async def _cache_put(self, batch: list[tuple[str, bytes]], ttl_ms: int) -> None:
        raise NotImplementedError

    async def _cache_get(self, key: str) -> tuple[bytes | None, int]:
        raise NotImplementedError

    async def _gcra(self, key: str, max_burst: int, period: float, tokens: int) -> list[Any]:
        """The native ``GCRA key max_burst 1 period TOKENS tokens``: [limited, max_burst + 1,
        remaining, retry_after (whole seconds, -1: never), reset_after]."""
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------------------

    def _attach(self, registry: Registry) -> None:
        if self._registry is not None and self._registry is not registry:
            raise ValueError(
                f"{type(self).__name__}: already the state of another registry; "
                "give each registry its own"
            )
        self._registry = registry
        if self._clock_given is None and registry.clock is not self.clock:
            self.clock = registry.clock
            self._health = self._new_health()

    async def start(self) -> None:
        """Register this replica and start the sync task (``async with registry`` does it)."""
        try:
            library = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            library = "none"
        if library != "asyncio":
            raise RuntimeError(
                f"{type(self).__name__} runs on asyncio only (it uses redis.asyncio); "
                f"this registry was entered under {library}: run it under asyncio, "
                "or build the registry without state="
            )
        if self._task is not None:
            return
        self._wake = asyncio.Event()
        self._sync_lock = asyncio.Lock()
        self._stopping = False
        self._registered = False
        self._epoch = ""
        self._acked.clear()
        self._dirty.clear()
        self._generations.clear()
        self._last_full = -math.inf
        await self._open()
        self.status = "degraded"
        self._probe_due = True  # after the first sync that works (not slower to start)
        await self.sync()
        self._log_status()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop syncing, take this replica's counts and slots out, close the client."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        assert self._wake is not None
        self._wake.set()
        await task
        was_connected = self.connected
        self.status = "stopped"
        if was_connected:
            with contextlib.suppress(Unavailable):
                await self._op("leave", LEAVE, self._head())
        if self._ops:
            await asyncio.wait(set(self._ops), timeout=self.command_timeout)
        await self._close()
        self.connected = False
        self._registered = False

    async def _loop(self) -> None:
        wake = self._wake
        assert wake is not None
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.sync_interval)
            wake.clear()
            if self._stopping:
                return
            try:
                await self.sync()
            except Exception:  # a bug must not stop the syncing for good
                _telemetry.logger.exception(
                    "seawall.shared.sync_failed", namespace=self.namespace, replica=self.replica
                )

    def wake(self) -> None:
        """Sync now rather than at the next interval (an override, a queue of waiters)."""
        if self._wake is not None:
            self._wake.set()

    # -- operations ------------------------------------------------------------------

    def now_ms(self) -> str:
        """The time argument of a script: '' for the server's TIME, else the clock's ms."""
        return "" if self.time_source == "server" else repr(round(self.clock.now() * 1000, 3))

    def now_us(self) -> str:
        return "" if self.time_source == "server" else repr(self.clock.now() * 1_000_000)

    def _head(self) -> list[str | int | float]:
        return [self.replica, self.now_ms(), round(self.lease_ttl * 1000)]

    async def _op(self, op: str, script: Script, args: Sequence[str | int | float | bytes]) -> Any:
        """Run one script under the backend's breaker; raise Unavailable if it cannot."""
        return await self._run(op, lambda: self._eval(script, args))

    async def _run(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run one operation under the backend's breaker; raise Unavailable if it cannot."""
        try:
            permit = self._health.acquire()
        except RejectedError:
            raise Unavailable(f"{op}: the backend is degraded") from None
        started = time.perf_counter()
        try:
            result = await call()
        except Exception as exc:
            self._health.record(permit, time.perf_counter() - started, True)
            reason = type(exc).__name__
            self.counters.errors[op, reason] += 1
            instruments = _telemetry.metrics_for(self)
            if instruments is not None:
                instruments.errors.add(1, {"op": op, "reason": reason})
            self._degraded_reason = reason
            self._refresh()
            raise Unavailable(f"{op}: {reason}") from exc
        self._health.record(permit, time.perf_counter() - started, False)
        self.counters.round_trips[op] += 1
        instruments = _telemetry.metrics_for(self)
        if instruments is not None:
            instruments.round_trips.add(1, {"op": op})
        return result

    async def cache_put(self, batch: list[tuple[str, bytes]], ttl_ms: int) -> None:
        """Store shared cache entries (one round trip)."""
        await self._run("cache_write", lambda: self._cache_put(batch, ttl_ms))

    async def cache_get(self, key: str) -> tuple[bytes | None, int]:
        """A shared cache entry and its time to live in ms (one round trip)."""
        return await self._run("cache_read", lambda: self._cache_get(key))

    def spawn(self, op: Awaitable[T]) -> asyncio.Task[T]:
        """Run *op* in the background, held until it is done (never cancelled)."""
        task: asyncio.Task[T] = asyncio.ensure_future(op)
        self._ops.add(task)
        task.add_done_callback(self._ops.discard)
        return task

    async def within_budget(
        self,
        fut: asyncio.Future[T],
        feature: str,
        dependency: str,
        *,
        within: float | None = None,
    ) -> T | None:
        """*fut*'s result if it comes within ``budget`` (or *within*, if shorter); None
        if not, or if it failed.

        The operation goes on in the background either way: its done-callbacks
        put its result to use.
        """
        if not fut.done():
            limit = self.budget if within is None else max(0.0, min(within, self.budget))
            started = time.perf_counter()
            done, _ = await asyncio.wait({fut}, timeout=limit)
            waited = time.perf_counter() - started
            if not done:
                self.local_decision(feature)
                mark_shared_local()
                _telemetry.wait_event(feature, dependency, "budget", waited)
                return None
            _telemetry.wait_event(feature, dependency, "answered", waited)
        if fut.cancelled() or fut.exception() is not None:
            self.local_decision(feature)
            mark_shared_local()
            return None
        return fut.result()

    def local_decision(self, feature: str) -> None:
        self.counters.local_decisions[feature] += 1
        instruments = _telemetry.metrics_for(self)
        if instruments is not None:
            instruments.local_decisions.add(1, {"feature": feature})

    async def slots(
        self, dependency: str, op: Literal["g", "r"], n: int, cap: int, released: int = -1
    ) -> tuple[int, str, int]:
        """Grant up to *n* more slots ('g'), or report *n* released in all ('r').

        A grant may carry the slots released in all (*released*), applied first.
        Returns (granted now, -1 if not registered; the record's epoch; granted in all).
        """
        pressure_ms = round(self.sync_interval * 2000)
        granted, epoch, total = await self._op(
            "grant" if op == "g" else "release",
            SLOTS,
            [*self._head(), dependency, op, n, cap, self._epoch, pressure_ms, released],
        )
        return int(granted), _text(epoch), int(total)

    async def _probe(self) -> None:
        """Ask the server whether it has a native GCRA command (once per script load)."""
        self._probe_due = False
        try:
            self.native_gcra = bool(int(await self._op("probe", PROBE, [])))
        except Unavailable:
            self._probe_due = True  # ask again after the next sync that works

    def uses_native_gcra(self, burst: float) -> bool:
        """Whether a shared rate limit of *burst* reserves with the native GCRA command.

        Only on server time (the command reads the server's clock) and for a whole
        burst of at least one token (its ``max_burst`` is an integer).
        """
        return (
            self.native_gcra
            and self.time_source == "server"
            and burst >= 1
            and float(burst).is_integer()
        )

    async def reserve(
        self, dependency: str, want: int, interval: float, burst: float
    ) -> tuple[int, float]:
        """GCRA: reserve up to *want* tokens (*interval* seconds apart).

        Returns (tokens granted, seconds until one would be).
        """
        if self.uses_native_gcra(burst):
            return await self._run(
                "reserve", lambda: self._reserve_native(dependency, want, interval, int(burst))
            )
        granted, retry_after = await self._op(
            "reserve", GCRA, [dependency, self.now_us(), want, repr(interval * 1e6), repr(burst)]
        )
        return int(granted), float(_text(retry_after)) / 1e6

    async def _reserve_native(
        self, dependency: str, want: int, interval: float, burst: int
    ) -> tuple[int, float]:
        """Reserve with the native GCRA command: all or nothing per call, so a refusal
        that leaves ``remaining`` tokens asks once more for those.

        Its ``retry_after`` is in whole seconds; a refused token is due within one
        emission interval (the arrival time never runs more than ``burst``
        intervals ahead), so the wait reported is at most *interval*.
        """
        key = f"{self.prefix}:n:{dependency}"
        want = max(1, min(want, burst))  # more than burst at once is never granted
        limited, _, remaining, retry_s, _ = await self._gcra(key, burst - 1, interval, want)
        if not int(limited):
            return want, 0.0
        if 1 <= int(remaining) < want:
            want = int(remaining)
            limited, _, remaining, retry_s, _ = await self._gcra(key, burst - 1, interval, want)
            if not int(limited):
                return want, 0.0
        if int(remaining) >= 1:
            return 0, 0.0  # taken by another replica in between: ask again at once
        retry = float(retry_s)
        return 0, interval if retry < 0 else min(retry, interval)

    def request_override(self, dependency: str, mode: str, ttl: float | None) -> None:
        """Ask every replica to apply *mode* to *dependency*'s breaker (from the next sync)."""
        if ttl is None and mode in _ONE_SHOT:
            ttl = self.lease_ttl
        self._asks[dependency] = (mode, 0 if ttl is None else max(1, round(ttl * 1000)))
        self.wake()

    # -- sync ------------------------------------------------------------------------

    def _units(self) -> dict[str, tuple[Runtime, Breaker | None]]:
        """What a sync carries, by name: each shared dependency, and each endpoint
        breaker of one that is advisory (``name\0digest``), with its breaker."""
        from ._breaker import AdvisoryBreaker

        registry = self._registry
        if registry is None:
            return {}
        units: dict[str, tuple[Runtime, Breaker | None]] = {}
        for rt in registry._runtimes():
            if rt.policy.shared is None or rt.state is not self:
                continue
            units[rt.name] = (rt, None)
            for breaker in rt.endpoint_breakers.values():
                if isinstance(breaker, AdvisoryBreaker):
                    units[breaker.sync_key] = (rt, breaker)
        return units

    async def sync(self) -> bool:
        """Sync now: send this replica's summary, act on the aggregates; True if it worked."""
        lock = self._sync_lock
        if lock is None:
            return False
        async with lock:
            return await self._sync_once()

    async def _sync_once(self) -> bool:
        if self._health._state is not CLOSED and not self._health.would_admit():
            return False  # degraded, and no probe due yet
        units = self._units()
        summaries = {name: _summary(rt, breaker) for name, (rt, breaker) in units.items()}
        asks = dict(self._asks)
        now = self.clock.now()
        # Register (every dependency sent) first; renew the lease (the record's
        # entries back) every lease_ttl; else only what changed.
        mode = "1" if not self._epoch else "2" if now - self._last_full >= self.lease_ttl else "0"
        started = time.perf_counter()
        try:
            reply = await self._op("sync", SYNC, self._sync_args(summaries, asks, mode))
            if len(reply) == 1:  # the record is gone (wiped, swept): register again
                mode = "1"
                reply = await self._op("sync", SYNC, self._sync_args(summaries, asks, mode))
        except Unavailable:
            return False
        instruments = _telemetry.metrics_for(self)
        if instruments is not None:
            instruments.sync_duration.record(time.perf_counter() - started)
        if self._probe_due:
            await self._probe()
        if mode != "0":
            self._last_full = now
        if mode == "1":
            self._acked.clear()
        for name, ask in asks.items():
            if self._asks.get(name) == ask:
                del self._asks[name]
        for name in self._sending:
            self._acked[name] = _key(summaries[name])
            self._dirty.discard(name)
        for name in [n for n in self._acked if n not in summaries]:
            del self._acked[name]
        self._apply(reply, units, summaries, asks)
        return True

    def _sync_args(
        self,
        summaries: dict[str, list[int]],
        asks: dict[str, tuple[str, int]],
        mode: str,
    ) -> list[str | int | float | bytes]:
        """The sync script's arguments: every changed dependency (all when registering,
        *mode* "1")."""
        acked, dirty = self._acked, self._dirty
        changed: list[str | int | float | bytes] = []
        self._sending = sending = []
        for name, summary in summaries.items():
            ask = asks.get(name)
            if mode == "1" or ask or name in dirty or acked.get(name) != _key(summary):
                sending.append(name)
                code, ttl = (OVERRIDES[ask[0]], ask[1]) if ask else (0, 0)
                changed += [name, SUMMARY.pack(*summary, code, ttl)]
        gone = [name for name in acked if name not in summaries]
        return [
            *self._head(),
            secrets.randbelow(2**40 - 1) + 1,
            self._epoch,
            mode,
            len(sending),
            *changed,
            len(gone),
            *gone,
            *summaries,
        ]

    def _apply(
        self,
        reply: list[Any],
        units: dict[str, tuple[Runtime, Breaker | None]],
        summaries: dict[str, list[int]],
        asks: dict[str, tuple[str, int]],
    ) -> None:
        from ._breaker import AdvisoryBreaker
        from ._bulkhead import SharedBulkhead
        from ._ratelimit import SharedRateLimiter

        epoch, live, server_now, aggregates, entries = reply
        epoch = _text(epoch)
        renewed = epoch != self._epoch
        self._epoch = epoch
        self.live_replicas = max(1, int(live))
        now = float(_text(server_now))
        names = list(summaries)
        parsed_entries = (
            dict(zip(names, map(_parse_entry, entries), strict=True)) if entries else {}
        )
        generations = self._generations
        for name, agg in zip(names, aggregates, strict=True):
            view = _view(agg, now, summaries[name][5])
            dep_view = view[0] if view is not None else DependencyView()
            entry = parsed_entries.get(name)
            if view is None:
                self._dirty.add(name)
            else:
                # Not counted in this aggregate (it was lost, and made again since):
                # send this dependency again, to be counted anew.
                seen = entry[5] if entry is not None else generations.get(name, view[1])
                if seen != view[1]:
                    self._dirty.add(name)
                generations[name] = view[1]
            self._views[name] = dep_view
            rt, endpoint_breaker = units[name]
            if isinstance(endpoint_breaker, AdvisoryBreaker):
                endpoint_breaker.follow(dep_view, own=name in asks)
                continue
            if isinstance(rt.breaker, AdvisoryBreaker):
                rt.breaker.follow(dep_view, own=name in asks)
            if isinstance(rt.bulkhead, SharedBulkhead):
                granted, released = (entry[2], entry[3]) if entry is not None else (0, 0)
                rt.bulkhead.follow(
                    dep_view,
                    granted=granted,
                    released=released,
                    fresh=renewed and entry is not None,
                )
            if isinstance(rt.limiter, SharedRateLimiter):
                rt.limiter.follow(dep_view)
        self._registered = True
        self._last_sync = self.clock.now()
        self._refresh()

    # -- health ----------------------------------------------------------------------

    def _on_health(self, event: Transition) -> None:
        self._refresh()

    def _refresh(self) -> None:
        """Recompute ``connected`` and ``status``; log a change of status, once."""
        connected = self._registered and self._health._state is CLOSED and not self._stopping
        if connected == self.connected:
            return
        self.connected = connected
        if self.status != "stopped":
            self.status = "connected" if connected else "degraded"
            self._log_status()

    def _log_status(self) -> None:
        if self.connected and self._said_degraded:
            self._said_degraded = False
            _telemetry.logger.info(
                "seawall.shared.recovered",
                backend=self.backend,
                namespace=self.namespace,
                replica=self.replica,
            )
        elif not self.connected and not self._said_degraded:
            self._said_degraded = True
            _telemetry.logger.warning(
                "seawall.shared.degraded",
                backend=self.backend,
                namespace=self.namespace,
                replica=self.replica,
                reason=self._degraded_reason or "unreachable",
            )

    # -- reading ---------------------------------------------------------------------

    def runtimes(self) -> list[Runtime]:
        """The shared dependencies of this state's registry (their runtimes)."""
        return [rt for rt, breaker in self._units().values() if breaker is None]

    def view(self, dependency: str) -> DependencyView:
        """The last synced aggregates of *dependency* (zeros before the first sync)."""
        return self._views.get(dependency, _NO_VIEW)

    @property
    def health(self) -> BreakerState:
        """The state of the breaker on the backend itself."""
        return self._health.state

    def snapshot(self) -> dict[str, Any]:
        """``{"backend", "status", "replica", "last_sync_age", ...}``: no URL, no password."""
        last = self._last_sync
        return {
            "backend": self.backend,
            "status": self.status,
            "replica": self.replica,
            "namespace": self.namespace,
            "last_sync_age": None if last is None else round(self.clock.now() - last, 3),
            "live_replicas": self.live_replicas,
            **self.counters.as_dict(),
        }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _key(summary: list[int]) -> tuple[int, ...]:
    """What makes a summary worth sending: all of it but the calls in flight."""
    return (summary[0], summary[1], summary[2], summary[4], summary[5])


def _parse_entry(raw: Any) -> tuple[int, int, int, int, int, float] | None:
    """A record entry: (tripped, evidence, granted, released, demand, generation)."""
    if raw is None or len(raw) != ENTRY.size:
        return None
    t, e, gt, rt, dm, ag = ENTRY.unpack(raw)
    return t, e, int(gt), int(rt), dm, ag


#: Override modes by the code the scripts store.
_MODES = {code: mode for mode, code in OVERRIDES.items()}


def _view(raw: Any, now: float, cap: int) -> tuple[DependencyView, float] | None:
    """An aggregate as a view, and its generation."""
    if raw is None or len(raw) != AGGREGATE.size:
        return None
    ag, live, trip, evid, slots, dem, pu, ovm, ovi, until = AGGREGATE.unpack(raw)
    override = _MODES.get(ovm)
    left = None
    if override is not None and until > 0:
        if until <= now:
            override = None
        else:
            left = (until - now) / 1000
    view = DependencyView(
        live=max(1, live),
        tripped=trip,
        evidence=evid,
        slots=slots,
        pressure=pu > now or (cap > 0 and dem > 0 and slots >= cap),
        override=override,
        override_id=ovi if override is not None else 0,
        override_left=left,
    )
    return view, ag


def _summary(rt: Runtime, endpoint_breaker: Breaker | None = None) -> list[int]:
    """[tripped, evidence, released, in_use, demand, cap] of one dependency (or of one
    endpoint's advisory breaker), for a sync."""
    from ._breaker import AdvisoryBreaker
    from ._bulkhead import SharedBulkhead

    tripped = evidence = released = in_use = demand = cap = 0
    breaker = endpoint_breaker if endpoint_breaker is not None else rt.breaker
    if isinstance(breaker, AdvisoryBreaker):
        tripped, evidence = breaker.evidence()
    bulkhead = rt.bulkhead
    if endpoint_breaker is None and isinstance(bulkhead, SharedBulkhead):
        released, in_use, demand, cap = bulkhead.summary()
    return [tripped, evidence, released, in_use, demand, cap]
