"""The dispatcher: claims due entries, sends them, records what came of them.

Its cycle never holds a connection while calling out: a claim is one short
committed transaction; sends run with nothing checked out; results are
written in groups (every ``flush_interval`` or when the sends in flight are
all done). On PostgreSQL the next claim rides in the statement that writes a
group: one round trip for both. Verifications, compensations, expired
leases, the gauges' counts and retention run on their own, slower beat.
"""

from __future__ import annotations

import collections
import functools
import os
import socket
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import structlog

from . import _telemetry as tel
from ._outbox import require_asyncio
from ._work import Claim, Result, Worker, run_all

if TYPE_CHECKING:
    from ._outbox import Outbox

__all__ = ["CycleReport", "Dispatcher"]

_logger = structlog.get_logger("seawall")

#: Waits after a database error: doubling from the first to the last.
_DB_BACKOFF = (0.2, 30.0)


@dataclass(slots=True)
class CycleReport:
    """What one :meth:`Dispatcher.run_once` did: entries handled, by what became of them."""

    claimed: int = 0
    swept: int = 0
    verified: int = 0
    compensations: int = 0
    lease_lost: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def busy(self) -> bool:
        return bool(self.claimed or self.swept or self.verified or self.compensations)

    def add(self, results: list[Result]) -> None:
        for r in results:
            state = str(r.row.state)
            self.outcomes[state] = self.outcomes.get(state, 0) + 1


def _owner() -> str:
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
        raise ValueError(
            f"Outbox.dispatcher({name}): must be an integer in 1..10000, got {value!r}"
        )
    return value


def _seconds(name: str, value: object, *, zero_ok: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (value >= 0 if zero_ok else value > 0)
        or not value <= 1e9
    ):
        raise ValueError(f"Outbox.dispatcher({name}): must be seconds in (0, 1e9], got {value!r}")
    return float(value)


class Dispatcher:
    """Sends an outbox's entries. Run it in the background (``async with``), for
    ever (``await run()``, until :meth:`stop`), or one cycle at a time
    (``await run_once()``: tests drive it on a ManualClock this way).

    On :meth:`stop` (SIGTERM under ``seawall outbox run``) it claims nothing
    more and lets the sends in flight finish, each within its deadline.
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        concurrency: int,
        batch_size: int,
        poll_interval: float,
        retention: float,
        purge_interval: float,
        counts_interval: float,
        flush_interval: float,
    ) -> None:
        self.outbox = outbox
        self.concurrency = _positive_int("concurrency", concurrency)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.poll_interval = _seconds("poll_interval", poll_interval)
        self.retention = _seconds("retention", retention)
        self.purge_interval = _seconds("purge_interval", purge_interval)
        self.counts_interval = _seconds("counts_interval", counts_interval)
        self.flush_interval = _seconds("flush_interval", flush_interval, zero_ok=True)
        self.owner = _owner()
        self.worker = Worker(outbox, self.owner)
        self._stopping = False
        self._in_flight = 0
        self._results: list[Result] = []
        self._queue: collections.deque[Claim] = collections.deque()
        self._wake_event = anyio.Event()
        self._slot_event = anyio.Event()
        self._result_event = anyio.Event()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._sends: anyio.abc.TaskGroup | None = None
        #: Entries being claimed right now (they count against batch_size).
        self._claiming = 0
        #: The last claim found fewer entries due than it asked for.
        self._drained = False
        #: Wake-ups so far: a claim that came back short is "drained" only if no commit
        #: woke the dispatcher while it ran (its entries may be past the claim's snapshot).
        self._wakes = 0
        #: PostgreSQL: the writer claims in the statement that writes the results.
        self._merge = outbox._stmts.dialect == "postgresql"
        self._done = anyio.Event()
        self.lease_lost = 0

    def __repr__(self) -> str:
        return f"<Dispatcher {self.owner} in_flight={self._in_flight}>"

    # -- one cycle --------------------------------------------------------------------

    async def run_once(self) -> CycleReport:
        """Do what is due now, once: expired leases, compensations, verifications, then a
        batch of sends (at most ``batch_size``, ``concurrency`` at a time); results written."""
        require_asyncio("Dispatcher.run_once")
        report = CycleReport()
        w = self.worker
        report.swept = await w.sweep()
        comps = await w.claim_compensations(self.batch_size)
        report.compensations = len(comps)
        if comps:
            await self._record([w.compensation(c) for c in comps], report)
        checks = await w.claim_verifications(self.batch_size)
        report.verified = len(checks)
        if checks:
            await self._record(await self._all(w.verify, checks), report)
        claims = await w.claim_sends(self.batch_size)
        report.claimed = len(claims)
        if claims:
            await self._record(await self._all(w.send, claims), report)
        return report

    async def drain(self, *, max_cycles: int = 1000) -> CycleReport:
        """:meth:`run_once` until a cycle finds nothing due; the cycles' totals."""
        total = CycleReport()
        for _ in range(max_cycles):
            report = await self.run_once()
            if not report.busy:
                break
            total.claimed += report.claimed
            total.swept += report.swept
            total.verified += report.verified
            total.compensations += report.compensations
            total.lease_lost += report.lease_lost
            for k, v in report.outcomes.items():
                total.outcomes[k] = total.outcomes.get(k, 0) + v
        return total

    async def _all(self, job: Any, claims: list[Claim]) -> list[Result]:
        return await run_all([functools.partial(job, c) for c in claims], self.concurrency)

    async def _record(self, results: list[Result], report: CycleReport) -> None:
        lost = await self.worker.write(results)
        report.lease_lost += lost
        self.lease_lost += lost
        report.add(results)

    # -- for ever ---------------------------------------------------------------------

    async def __aenter__(self) -> Dispatcher:
        require_asyncio("Dispatcher")
        self._cm = anyio.create_task_group()
        tg = await self._cm.__aenter__()
        tg.start_soon(self.run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self.stop()
        return await self._cm.__aexit__(exc_type, exc, tb)

    def stop(self) -> None:
        """Claim nothing more; sends in flight finish (within their deadlines) and are recorded."""
        self._stopping = True
        self._wake_event.set()
        self._slot_event.set()

    def wake(self) -> None:
        """Look for work now (a commit enqueued some) rather than at the next poll."""
        self._drained = False
        self._wakes += 1
        self._wake_event.set()

    async def run(self) -> None:
        """Dispatch until :meth:`stop`."""
        require_asyncio("Dispatcher.run")
        self.outbox._wakers.append(self.wake)
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                tg.start_soon(self._housekeeping)
                writer_done = anyio.Event()
                tg.start_soon(self._writer, writer_done)
                sends: anyio.abc.TaskGroup
                async with anyio.create_task_group() as sends:
                    self._sends = sends
                    await self._claim_loop(sends)
                # Sends all finished: the writer records the last results and ends.
                self._stopping = True
                self._result_event.set()
                await writer_done.wait()
                tg.cancel_scope.cancel()
        finally:
            self.outbox._wakers.remove(self.wake)
            self._done.set()

    async def _claim_loop(self, sends: anyio.abc.TaskGroup) -> None:
        """Keep up to ``batch_size`` entries claimed, ``concurrency`` of them sending.

        Claims come in groups (one statement for many entries): a new claim is
        made when half the batch has gone, not for each slot that frees. On
        PostgreSQL, while results wait to be written, the writer makes that
        claim in the statement that writes them (see ``_writer``); this loop
        claims alone when there is nothing to write (start, a commit's wake-up,
        a poll). An entry waits in ``_queue`` at most until its lease could no
        longer cover a whole send; then it is given back unsent (see ``_start``).
        """
        failures = 0
        half = max(1, self.batch_size // 2)
        while not self._stopping:
            if self._drained:
                # Nothing more was due: wait for a commit (wake), the next poll, or stop.
                self._wake_event = anyio.Event()
                if self._drained:
                    with anyio.move_on_after(self.poll_interval):
                        await self._wake_event.wait()
                self._drained = False
                continue
            room = self._room()
            held = self.batch_size - room
            # On PostgreSQL, results waiting to be written (or a claim under way) mean
            # the writer is about to claim, in the statement that writes them.
            if (room < half and held) or (self._merge and (self._results or self._claiming)):
                self._slot_event = anyio.Event()
                await self._slot_event.wait()
                continue
            self._claiming = room
            wakes = self._wakes
            try:
                claims = await self.worker.claim_sends(room)
            except Exception as exc:
                failures += 1
                await self._db_backoff("claim", exc, failures)
                continue
            finally:
                self._claiming = 0
            failures = 0
            self._take(claims, room, wakes)
        # Stopping: what was claimed but never started goes back, unsent.
        unsent, self._queue = list(self._queue), collections.deque()
        if unsent:
            self._results.extend(self.worker.give_back(c) for c in unsent)
            self._result_event.set()

    def _room(self) -> int:
        """How many more entries may be claimed: batch_size less those held or being claimed."""
        return self.batch_size - len(self._queue) - self._in_flight - self._claiming

    def _take(self, claims: list[Claim], asked: int, wakes: int) -> None:
        """Queue fresh claims and start them (give them back if stopping meanwhile).

        *wakes* is the wake-up count when the claim began: a commit since then
        may have made more entries due than the claim saw.
        """
        if len(claims) < asked and wakes == self._wakes:
            self._drained = True
        if self._stopping:
            if claims:
                self._results.extend(self.worker.give_back(c) for c in claims)
                self._result_event.set()
            return
        self._queue.extend(claims)
        if self._sends is not None:
            self._start(self._sends)

    def _start(self, sends: anyio.abc.TaskGroup) -> None:
        """Start queued sends while slots are free; give back those whose lease ran short."""
        clock = self.outbox.clock
        while self._queue and self._in_flight < self.concurrency and not self._stopping:
            claim = self._queue.popleft()
            route = self.outbox.settings(claim.entry.dependency)
            if clock.now() + route.send_deadline > claim.lease_until:
                # It waited too long for a slot: its lease could not cover a send.
                self._results.append(self.worker.give_back(claim))
                self._result_event.set()
                continue
            self._in_flight += 1
            sends.start_soon(self._send, claim, sends)

    async def _send(self, claim: Claim, sends: anyio.abc.TaskGroup) -> None:
        try:
            result = await self.worker.send(claim)
            self._results.append(result)
            self._result_event.set()
        finally:
            self._in_flight -= 1
            self._start(sends)
            self._slot_event.set()

    async def _writer(self, done: anyio.Event) -> None:
        """Write results in groups: half a batch, or ``flush_interval`` after the first;
        on PostgreSQL, claim the room left in the same statement (``Worker.exchange``)."""
        failures = 0
        half = max(1, self.batch_size // 2)
        try:
            while True:
                await self._result_event.wait()
                self._result_event = anyio.Event()
                if self.flush_interval and len(self._results) < half and self._in_flight:
                    with anyio.move_on_after(self.flush_interval):
                        while len(self._results) < half and self._in_flight:
                            await self._result_event.wait()
                            self._result_event = anyio.Event()
                batch, self._results = self._results, []
                while batch:
                    # PostgreSQL: the next claim rides on the write (one round trip).
                    limit = 0
                    if self._merge and not self._stopping and not self._drained:
                        limit = max(0, self._room())
                    self._claiming = limit
                    wakes = self._wakes
                    try:
                        lost, claims = await self.worker.exchange(batch, limit)
                    except Exception as exc:
                        failures += 1
                        if self._stopping and failures > 5:
                            _logger.warning(
                                "seawall.outbox.results_dropped",
                                count=len(batch),
                                hint="their leases will expire and they will be claimed again",
                            )
                            break
                        await self._db_backoff("write", exc, failures)
                        continue
                    finally:
                        self._claiming = 0
                    failures = 0
                    self.lease_lost += lost
                    batch = []
                    self._take(claims, limit, wakes)
                    self._slot_event.set()  # the claim loop looks again
                if self._results:
                    self._result_event.set()  # more came while writing
                elif self._stopping and not self._in_flight and not self._queue:
                    return
        finally:
            done.set()

    async def _housekeeping(self) -> None:
        """Expired leases, compensations and verifications every poll; counts; retention."""
        clock = self.outbox.clock
        next_counts = 0.0
        next_purge = clock.now() + min(60.0, self.purge_interval)
        failures = 0
        w = self.worker
        while not self._stopping:
            try:
                await w.sweep()
                comps = await w.claim_compensations(self.batch_size)
                if comps:
                    await w.write([w.compensation(c) for c in comps])
                checks = await w.claim_verifications(self.batch_size)
                if checks:
                    await w.write(await self._all(w.verify, checks))
                now = clock.now()
                if now >= next_counts:
                    await self.count()
                    next_counts = now + self.counts_interval
                if now >= next_purge:
                    await self.outbox.purge(self.retention)
                    next_purge = now + self.purge_interval
                failures = 0
            except Exception as exc:
                failures += 1
                await self._db_backoff("housekeeping", exc, failures)
                continue
            await anyio.sleep(self.poll_interval)

    async def count(self) -> None:
        """Refresh the ``seawall.outbox.entries`` and ``oldest_age`` gauges now (one grouped
        COUNT); a running dispatcher does it every ``counts_interval``, never per scrape."""
        from ._ops import counts

        found = await counts(self.outbox)
        tel.track_counts(self.outbox, self.outbox.table.name, self.outbox.clock.now(), found)

    async def _db_backoff(self, what: str, exc: Exception, failures: int) -> None:
        first, last = _DB_BACKOFF
        wait = min(last, first * 2 ** (failures - 1))
        _logger.warning(
            "seawall.outbox.db_error",
            during=what,
            error=f"{type(exc).__name__}: {str(exc)[:300]}",
            retry_in=wait,
            failures=failures,
        )
        self._wake_event = anyio.Event()
        with anyio.move_on_after(wait):
            await self._wake_event.wait()  # stop() ends the wait
