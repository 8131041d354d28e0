"""A discrete-event model: a client with an adaptive limit in front of a queueing server.

Deterministic (a seeded ``random.Random`` and simulated time): the
algorithms' tests run whole minutes of traffic in milliseconds, with no
sleeping and no sockets. The server has ``workers`` serving one FIFO queue,
each request for ``service`` seconds (±10 %); a schedule changes either
mid-run. Arrivals are open-loop at ``rate`` per second; one over the limit
is refused at once, as a bulkhead with ``max_wait=0`` does.
"""

from __future__ import annotations

import heapq
import random
import statistics
from collections import deque
from dataclasses import dataclass, field

from seawall import AdaptiveLimit
from seawall._adaptive import Controller


@dataclass
class Run:
    """What a simulated run saw; every series is stamped with simulated seconds."""

    limits: list[tuple[float, int]] = field(default_factory=list)  # after every sample
    in_flight: list[tuple[float, int]] = field(default_factory=list)  # at every admission
    answered: list[tuple[float, float]] = field(default_factory=list)  # (end, latency)
    timeouts: int = 0
    rejected: int = 0
    controller: Controller | None = None

    def median_in_flight(self, t0: float, t1: float) -> float:
        return statistics.median(n for t, n in self.in_flight if t0 <= t < t1)

    def median_limit(self, t0: float, t1: float) -> float:
        return statistics.median(n for t, n in self.limits if t0 <= t < t1)

    def median_latency(self, t0: float, t1: float) -> float:
        return statistics.median(lat for t, lat in self.answered if t0 <= t < t1)

    def goodput(self, t0: float, t1: float) -> float:
        return sum(1 for t, _ in self.answered if t0 <= t < t1) / (t1 - t0)


def simulate(
    config: AdaptiveLimit,
    *,
    schedule: list[tuple[float, int, float]],
    max_concurrent: int = 100,
    rate: float = 1200.0,
    duration: float = 10.0,
    overhead: float = 0.0005,
    timeout: float | None = None,
    seed: int = 1,
) -> Run:
    """Run *duration* seconds; *schedule* lists ``(from_time, workers, service)``.

    *overhead* is the one-way network time (±50 %). *timeout* cuts an attempt
    (a timed-out sample; the server still works on the request).
    """
    rng = random.Random(seed)
    ctl = Controller(config, max_concurrent=max_concurrent, now=0.0, random=rng.random)
    run = Run(controller=ctl)
    events: list[tuple[float, int, str, int]] = []
    seq = 0

    def push(t: float, kind: str, rid: int) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, rid))

    workers, service = schedule[0][1], schedule[0][2]
    for i, (t, _, _) in enumerate(schedule[1:], start=1):
        push(t, "schedule", i)
    for i in range(int(duration * rate)):
        push(i / rate, "arrive", i)
    queue: deque[int] = deque()
    busy = 0
    sent: dict[int, float] = {}
    in_flight = 0

    def serve(now: float) -> None:
        nonlocal busy
        while busy < workers and queue:
            rid = queue.popleft()
            busy += 1
            push(now + service * (0.9 + 0.2 * rng.random()), "served", rid)

    def travel() -> float:
        return overhead * (0.5 + rng.random())

    while events:
        now, _, kind, rid = heapq.heappop(events)
        if kind == "schedule":
            workers, service = schedule[rid][1], schedule[rid][2]
            serve(now)
        elif kind == "arrive":
            if in_flight >= ctl.limit:
                run.rejected += 1
                continue
            in_flight += 1
            run.in_flight.append((now, in_flight))
            sent[rid] = now
            push(now + travel(), "at_server", rid)
            if timeout is not None:
                push(now + timeout, "timeout", rid)
        elif kind == "at_server":
            queue.append(rid)
            serve(now)
        elif kind == "served":
            busy -= 1
            serve(now)
            push(now + travel(), "answer", rid)
        elif rid in sent:  # an answer or a timeout, whichever came first
            latency = now - sent.pop(rid)
            timed_out = kind == "timeout"
            run.limits.append((now, ctl.sample(now, latency, timed_out, in_flight)))
            in_flight -= 1
            if timed_out:
                run.timeouts += 1
            else:
                run.answered.append((now, latency))
    return run
