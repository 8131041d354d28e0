"""The global bulkhead: slots leased from a cap held in Redis, spent from a local pocket.

Redis holds each live replica's slot count, and its scripts keep their sum at
most ``GlobalBulkhead.max_concurrent``. A replica spends the slots it holds
with no I/O at all (``try_acquire`` is a couple of comparisons); when none is
free it asks for ``grant_step`` more (one request in flight), and a call waits
at most ``budget`` for the answer. If no slot is free anywhere, the call
queues here (FIFO, for the policy bulkhead's ``max_wait``) while the replica
asks again every sync interval and the others, told of the pressure, give
back their idle slots. Idle slots go back after ``idle_release``; slots ride
on the heartbeat, so a dead replica's are swept with its lease.

While the state is degraded (or a grant is later than ``budget``) the
replica decides alone: at most ``max(1, max_concurrent // live replicas)``
calls in flight (``on_unavailable="local_share"``), or none (``"reject"``).
After a re-registration (Redis restarted or wiped, the lease swept) the
replica holds what its calls in flight need, as far as the cap allows; over
it, it starts no new call until back under it.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import TYPE_CHECKING, Any

from .._adaptive import Controller
from .._bulkhead import BulkheadStatistics
from .._clock import Clock
from .._config import MAX_SECONDS, Bulkhead, GlobalBulkhead
from .._exceptions import BulkheadFullError
from ._state import DependencyView

if TYPE_CHECKING:
    from ._state import SharedState

__all__ = ["SharedBulkhead"]

#: The token of a held slot (slots are counted, not named).
_SLOT = object()


class SharedBulkhead:
    """The runtime bulkhead of a dependency under a :class:`~seawall.GlobalBulkhead`.

    A drop-in for :class:`~seawall.BulkheadHandle`: ``config.max_wait``
    includes ``budget`` while the state is connected (the longest a call may
    wait for a grant, then for a slot).
    """

    __slots__ = (
        "_adaptive",
        "_backend",
        "_cap",
        "_clock",
        "_configs",
        "_flush",
        "_flush_again",
        "_giving_back",
        "_grant",
        "_grant_waiting",
        "_granted",
        "_in_use",
        "_limit",
        "_local_cap",
        "_low",
        "_max_wait",
        "_pressure",
        "_refused",
        "_refused_until",
        "_released",
        "_seen",
        "_share",
        "_static_cap",
        "_view",
        "_waiters",
        "_window_start",
        "dependency",
        "global_config",
    )

    def __init__(
        self,
        local: Bulkhead | None,
        global_config: GlobalBulkhead,
        *,
        dependency: str,
        state: SharedState,
        clock: Clock,
    ) -> None:
        self.dependency = dependency
        self.global_config = global_config
        self._backend = state
        self._clock = clock
        self._cap = global_config.max_concurrent
        self._static_cap = local.max_concurrent if local is not None else self._cap
        # An adaptive local limit (Bulkhead.adaptive) moves this replica's own cap
        # within the global one: the provider's latency speaks for every replica.
        self._adaptive = (
            Controller(local.adaptive, max_concurrent=local.max_concurrent, now=clock.now())
            if local is not None and local.adaptive is not None
            else None
        )
        self._local_cap = (
            self._static_cap
            if self._adaptive is None
            else min(self._static_cap, self._adaptive.limit)
        )
        self._max_wait = local.max_wait if local is not None else 0.0
        waiting = min(MAX_SECONDS, self._max_wait + state.budget)
        self._configs = (
            Bulkhead(max_concurrent=self._static_cap, max_wait=self._max_wait),
            Bulkhead(max_concurrent=self._static_cap, max_wait=waiting),
        )
        self._in_use = 0
        # Cumulative counts of this registration: granted by Redis, given back.
        self._granted = 0
        self._released = 0
        self._share = self._cap
        self._limit = 0
        self._seen: bool | None = None
        self._waiters: deque[asyncio.Future[object]] = deque()
        self._grant: asyncio.Task[Any] | None = None
        self._grant_waiting = 0
        self._refused = 0
        self._refused_until = -math.inf
        self._low = 0
        self._window_start = clock.now()
        self._flush: asyncio.Task[Any] | None = None
        self._flush_again = False
        self._giving_back = False
        self._pressure = False
        self._view = DependencyView()

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<SharedBulkhead {self.dependency!r} {s.in_use}/{s.limit} "
            f"global={self._cap} waiting={s.waiting}>"
        )

    # -- reading -----------------------------------------------------------------------

    @property
    def config(self) -> Bulkhead:
        """The local settings; ``max_wait`` includes ``budget`` while connected."""
        return self._configs[self._backend.connected]

    @property
    def held(self) -> int:
        """Slots this replica holds of the global cap (granted and not given back)."""
        return self._granted - self._released

    def statistics(self) -> BulkheadStatistics:
        self._follow_status()
        adaptive = self._adaptive
        return BulkheadStatistics(
            in_use=self._in_use,
            limit=self._limit,
            waiting=len(self._waiters),
            adaptive=None if adaptive is None else adaptive.statistics(),
        )

    def shared_snapshot(self) -> dict[str, Any]:
        connected = self._backend.connected
        on_unavailable = self.global_config.on_unavailable
        return {
            "max_concurrent": self._cap,
            "held": self.held,
            "in_use": self._in_use,
            "cluster_slots": self._view.slots,
            "mode": "leased" if connected else on_unavailable,
            "local_share": self._share,
        }

    # -- the BulkheadHandle interface ------------------------------------------------------

    def try_acquire(self) -> object | None:
        """Take a slot from the pocket without waiting (no I/O); None when none is free."""
        if self._backend.connected is not self._seen:
            self._follow_status()
        if self._in_use >= self._limit or self._waiters:
            return None
        self._in_use += 1
        free = self._limit - self._in_use
        if free < self._low:
            self._low = free
        return _SLOT

    async def acquire(self) -> object:
        """Take a slot: from the pocket, a grant (within ``budget``), or the queue (``max_wait``)."""
        slot = await self._acquire(self.config.max_wait)
        if slot is None:
            raise self.rejection()
        return slot

    async def acquire_within(self, seconds: float) -> object | None:
        """Take a slot, waiting at most *seconds* in all; None if none came."""
        return await self._acquire(seconds)

    def release(self, token: object) -> None:
        self._in_use -= 1
        if self._waiters:
            self._drain()
        elif self.global_config.idle_release == 0 and not self._giving_back:
            # Strict mode: the slot goes back at the end of this turn of the event
            # loop (when a background send would start anyway), unless a call
            # starting in the meantime takes it: then no round trip at all.
            self._giving_back = True
            asyncio.get_running_loop().call_soon(self._give_back_idle)

    def _give_back_idle(self) -> None:
        self._giving_back = False
        if not self._waiters:
            self._give_back(self._free())

    def observe(self, latency: float, timed_out: bool) -> None:
        """An attempt that held a slot ended after *latency* seconds: an adaptive
        local limit learns from it (a static one ignores it)."""
        adaptive = self._adaptive
        if adaptive is None:
            return
        cap = min(
            self._static_cap, adaptive.sample(self._clock.now(), latency, timed_out, self._in_use)
        )
        if cap != self._local_cap:
            self._local_cap = cap
            self._follow_status()  # the pocket's usable size under the new cap
            if self._waiters:
                self._drain()  # a higher cap frees slots for those waiting now

    def rejection(self) -> BulkheadFullError:
        if self._in_use >= self._local_cap:
            adaptive = self._adaptive is not None
            message = (
                f"bulkhead of {self.dependency!r} is full ({self._local_cap} calls in flight "
                f"from this replica, {'its adaptive limit now' if adaptive else 'its limit'})"
            )
            return BulkheadFullError(
                message,
                dependency=self.dependency,
                limit=self._local_cap,
                detail="adaptive" if adaptive else None,
            )
        if not self._backend.connected and self.global_config.on_unavailable == "reject":
            message = (
                f"global bulkhead of {self.dependency!r} is unavailable "
                "(shared state degraded, on_unavailable='reject')"
            )
        else:
            message = (
                f"global bulkhead of {self.dependency!r} is full "
                f"({self._cap} calls in flight across replicas)"
            )
        return BulkheadFullError(
            message, dependency=self.dependency, limit=self._cap, detail="global"
        )

    # -- waiting -----------------------------------------------------------------------------

    async def _acquire(self, seconds: float) -> object | None:
        slot = self.try_acquire()
        if slot is not None:
            return slot
        loop = asyncio.get_running_loop()
        start = loop.time()
        if self._in_use < self._local_cap and not self._waiters:
            answered = await self._grants_within_budget(start + min(seconds, self._backend.budget))
            slot = self.try_acquire()
            if slot is not None:
                return slot
            if not answered and self._local_share_allows():
                # Redis slower than budget, or degraded: decide alone.
                self._in_use += 1
                return _SLOT
        # No slot free anywhere: wait in line, for max_wait at most.
        return await self._queue(min(start + seconds, loop.time() + self._max_wait))

    def _local_share_allows(self) -> bool:
        return (
            self.global_config.on_unavailable == "local_share"
            and not self._waiters
            and self._in_use < min(self._local_cap, self._share)
        )

    async def _grants_within_budget(self, deadline: float) -> bool:
        """Ask for slots until one is ours, refused, or *deadline*; False if Redis did not
        answer in time (or could not be asked)."""
        loop = asyncio.get_running_loop()
        backend = self._backend
        while True:
            task = self._request_grant()
            if task is None:
                return backend.connected  # refused a moment ago, or degraded
            self._grant_waiting += 1
            try:
                result = await backend.within_budget(
                    task, "bulkhead", self.dependency, within=deadline - loop.time()
                )
            finally:
                self._grant_waiting -= 1
            if result is None:
                return False
            self._granted_now(task)  # (a no-op if its callback ran already)
            if result[0] <= 0 or self._in_use < self._limit or loop.time() >= deadline:
                return True  # refused, or a slot is free now, or no time left to ask again

    async def _queue(self, deadline: float) -> object | None:
        """Wait in line (FIFO) for a slot until *deadline*, asking for grants meanwhile."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[object] = loop.create_future()
        self._waiters.append(fut)
        try:
            while not fut.done():
                left = deadline - loop.time()
                if left <= 0:
                    break
                self._request_grant()
                await asyncio.wait({fut}, timeout=min(left, self._backend.sync_interval))
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())  # handed a slot just as we were cancelled
            raise
        finally:
            if not fut.done():
                fut.cancel()
            if fut in self._waiters:
                self._waiters.remove(fut)
        if fut.cancelled():
            self._refused += 1
            return None
        return fut.result()

    def _drain(self) -> None:
        """Hand free slots to the waiters, first come first served."""
        waiters = self._waiters
        while waiters and self._in_use < self._limit:
            fut = waiters.popleft()
            if not fut.done():
                self._in_use += 1
                fut.set_result(_SLOT)

    # -- grants and releases ---------------------------------------------------------------------

    def _request_grant(self) -> asyncio.Task[Any] | None:
        grant = self._grant
        if grant is not None:
            if not grant.done():
                return grant
            self._granted_now(grant)  # done, its callback not run yet: take its slots now
        backend = self._backend
        if not backend.connected or asyncio.get_running_loop().time() < self._refused_until:
            return None
        want = min(
            self._cap,
            max(self.global_config.grant_step or 1, self._grant_waiting + 1 + len(self._waiters)),
        )
        # A release waiting behind one in flight rides on the grant (cumulative
        # counts: whichever lands first, each counts once).
        self._flush_again = False
        task = self._grant = backend.spawn(
            backend.slots(self.dependency, "g", want, self._cap, self._released)
        )
        task.add_done_callback(self._granted_now)
        return task

    def _granted_now(self, task: asyncio.Task[Any]) -> None:
        if task is not self._grant:
            return  # already taken in
        self._grant = None
        if task.cancelled() or task.exception() is not None:
            return
        n, epoch, total = task.result()
        backend = self._backend
        if epoch != backend._epoch:
            return  # granted before a re-registration: those slots are gone
        if n < 0:
            backend.wake()  # not registered (Redis restarted or wiped): sync now
            return
        if n == 0:
            self._refused += 1
            self._refused_until = asyncio.get_running_loop().time() + min(
                0.05, backend.sync_interval
            )
        self._granted = max(self._granted, total)
        self._follow_status()
        self._drain()

    def _free(self) -> int:
        return self._granted - self._released - self._in_use

    def _give_back(self, n: int) -> None:
        """Release *n* idle slots of the pocket (at once, not waiting for the next sync)."""
        if n <= 0:
            return
        self._released += n
        self._follow_status()
        if self._backend.connected:
            self._send_releases()

    def _send_releases(self) -> None:
        if self._flush is not None:
            self._flush_again = True
            return
        backend = self._backend
        task = self._flush = backend.spawn(
            backend.slots(self.dependency, "r", self._released, self._cap)
        )
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[Any]) -> None:
        self._flush = None
        if not task.cancelled():
            task.exception()  # retrieved: Unavailable is counted by the state already
        if self._flush_again:
            self._flush_again = False
            if self._backend.connected:
                self._send_releases()

    # -- the sync task ----------------------------------------------------------------------

    def summary(self) -> tuple[int, int, int, int]:
        """(released in all, in use, demand, cap) for a sync; gives back idle slots first."""
        now = self._clock.now()
        free = self._free()
        if self._pressure and free > 0:
            self._released += free
        elif now - self._window_start >= self.global_config.idle_release:
            idle = min(self._low, free)
            if idle > 0:
                self._released += idle
            self._window_start = now
            self._low = self._free()
        demand = len(self._waiters) + self._refused
        self._refused = 0
        self._follow_status()
        return self._released, self._in_use, demand, self._cap

    def follow(self, view: DependencyView, *, granted: int, released: int, fresh: bool) -> None:
        """Act on a sync's reply: what Redis says this replica was granted and gave back
        (cumulative: a reply lost on the way is made good here), the live replicas."""
        self._view = view
        if fresh:
            self._granted, self._released = granted, released
            self._low = 0
        else:
            self._granted = max(self._granted, granted)
            self._released = max(self._released, released)
        self._share = max(1, self._cap // max(1, view.live))
        self._pressure = view.pressure
        if view.slots < self._cap:
            self._refused_until = -math.inf
        self._follow_status()
        self._drain()
        if self._pressure and not self._waiters:
            self._give_back(self._free())

    def _follow_status(self) -> None:
        """The pocket's size under the state's status: leased, a local share, or none."""
        connected = self._backend.connected
        self._seen = connected
        if connected:
            pocket = self._granted - self._released
        elif self.global_config.on_unavailable == "reject":
            pocket = 0
        else:
            pocket = self._share
        self._limit = min(self._local_cap, pocket)
