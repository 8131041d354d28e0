"""What shared state on Redis costs a call, measured against the same policy kept local.

    python bench/shared.py            # full run (about two minutes)
    python bench/shared.py --quick    # smoke run (< 40 s)
    python bench/shared.py --sync-only  # section 4 alone (about 20 s)

It starts its own redis-server (``--save '' --appendonly no``) on a free
loopback port, and stops it at the end. Sections:

1. the hot path: a guarded no-op (and a ResilientClient on MockTransport)
   under each shared feature, next to the same policy kept local; local and
   Redis rows interleaved in every round (bench/_common.py), with the Redis
   round trips per call each case made;
2. paced calls: the global bulkhead at 1,000 calls/s and the shared rate
   limit at 500 calls/s for a few seconds: round trips per call;
3. Redis paused (SIGSTOP) under 1,000 calls/s: the latency per call in the
   first second (while the state detects it) and after (degraded), next to
   the same run with Redis up;
4. sync at scale: Redis CPU per sync script (``INFO commandstats``
   ``usec_per_call``) at 100 simulated replicas x 10 dependencies.

Redis commands are counted from ``INFO commandstats`` deltas. See
docs/performance.md for recorded figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import redis
from _common import Case, contention, machine_summary, measure, print_table, quantile, versions

import seawall
from seawall._demo.replicas import EmbeddedRedis
from seawall._shared._lua import SUMMARY, SYNC
from seawall.redis import RedisState

NO_TIMEOUTS = seawall.Timeouts(
    connect=None, read=None, write=None, pool=None, attempt=None, total=None
)
BREAKER = seawall.CircuitBreaker()
BULKHEAD = seawall.Bulkhead(max_concurrent=100)
RATE = seawall.RateLimit(rate=1_000_000, burst=1_000_000)


# -- a redis-server of our own -------------------------------------------------------------


class Server(EmbeddedRedis):
    """The demo's embedded redis-server, with a client to count its commands."""

    def __init__(self) -> None:
        super().__init__(shutil.which("redis-server") or "/usr/bin/redis-server")
        self.start(timeout=15)
        self.client = redis.Redis(port=self.port)

    def commands(self) -> dict[str, tuple[int, int]]:
        """(calls, usec) per command so far."""
        stats = self.client.info("commandstats")
        return {k.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for k, v in stats.items()}

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.client.close()
        super().stop()


def delta(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, int]:
    return {
        k: after[k][0] - before.get(k, (0, 0))[0]
        for k in after
        if after[k][0] - before.get(k, (0, 0))[0] and k not in ("info",)
    }


# -- 1. the hot path ----------------------------------------------------------------------

G_HOT = "1. a call's cost, local vs shared on Redis (connected), us per call"
GROUPS = [G_HOT]


async def noop() -> None:
    return None


def policy(**parts: Any) -> seawall.Policy:
    return seawall.Policy(timeouts=NO_TIMEOUTS, retry=None, **parts)


def shared_state(url: str, namespace: str) -> RedisState:
    return RedisState(url, namespace=namespace)


class Counting:
    """Round trips made by the states of a case, per call."""

    def __init__(self) -> None:
        self.states: dict[str, list[RedisState]] = {}
        self.calls: dict[str, int] = {}
        self.trips: dict[str, int] = {}

    def wrap(
        self, name: str, states: list[RedisState], run: Callable[[int], Awaitable[int]]
    ) -> Callable[[int], Awaitable[int]]:
        self.states[name] = states

        async def counted(n: int) -> int:
            before = sum(
                sum(s.counters.round_trips.values()) - s.counters.round_trips["sync"]
                for s in states
            )
            rejected = await run(n)
            after = sum(
                sum(s.counters.round_trips.values()) - s.counters.round_trips["sync"]
                for s in states
            )
            self.calls[name] = self.calls.get(name, 0) + n
            self.trips[name] = self.trips.get(name, 0) + after - before
            return rejected

        return counted

    def per_call(self, name: str) -> float | None:
        if name not in self.calls:
            return None
        return self.trips[name] / self.calls[name]


def loop(call: Callable[[], Awaitable[Any]]) -> Callable[[int], Awaitable[int]]:
    async def run(n: int) -> int:
        for _ in range(n):
            await call()
        return 0

    return run


async def hot_path(
    url: str, *, rounds: int, calls: int, registries: list[seawall.Registry]
) -> tuple[dict[str, Any], Counting]:
    counting = Counting()
    cases: list[Case] = []

    def guard_case(
        name: str,
        parts: dict[str, Any],
        shared: seawall.Shared | None,
        ref: str | None,
        note: str = "",
    ) -> None:
        state = shared_state(url, f"bench-{len(cases)}") if shared is not None else None
        registry = seawall.Registry(state=state)
        registries.append(registry)
        g = registry.guard("dep", policy(shared=shared, **parts))
        run = loop(lambda: g.call(noop))
        if state is not None:
            run = counting.wrap(name, [state], run)
        cases.append(Case(name, G_HOT, run, ref=ref, note=note))

    guard_case("guard: breaker (local)", {"breaker": BREAKER}, None, None)
    guard_case(
        "guard: advisory breaker (Redis)",
        {"breaker": BREAKER},
        seawall.Shared(breaker="advisory"),
        "guard: breaker (local)",
    )
    guard_case("guard: bulkhead (local)", {"breaker": None, "bulkhead": BULKHEAD}, None, None)
    guard_case(
        "guard: global bulkhead, leased (Redis)",
        {"breaker": None, "bulkhead": BULKHEAD},
        seawall.Shared(bulkhead=seawall.GlobalBulkhead(max_concurrent=40)),
        "guard: bulkhead (local)",
    )
    guard_case("guard: rate limit (local)", {"breaker": None, "rate_limit": RATE}, None, None)
    guard_case(
        "guard: shared rate limit (Redis)",
        {"breaker": None, "rate_limit": RATE},
        seawall.Shared(rate_limit=True),
        "guard: rate limit (local)",
    )

    def client_case(name: str, shared: seawall.Shared | None, ref: str | None) -> None:
        state = shared_state(url, f"bench-{len(cases)}") if shared is not None else None
        registry = seawall.Registry(state=state)
        registries.append(registry)
        transport = httpx.MockTransport(lambda request: httpx.Response(200, text="ok"))
        registry.add(
            "api",
            base_url="http://api.example",
            transport=transport,
            policy=seawall.Policy(
                retry=None,
                breaker=BREAKER,
                bulkhead=BULKHEAD,
                rate_limit=RATE,
                fallback=seawall.Fallback(stale_if_error=60),
                shared=shared,
            ),
        )
        client = registry.client("api")

        async def get() -> None:
            response = await client.get("/items")
            await response.aread()

        run = loop(get)
        if state is not None:
            run = counting.wrap(name, [state], run)
        cases.append(Case(name, G_HOT, run, ref=ref))

    client_case("ResilientClient, MockTransport (local)", None, None)
    client_case(
        "ResilientClient, MockTransport, every shared feature (Redis)",
        seawall.Shared(
            breaker="advisory",
            bulkhead=seawall.GlobalBulkhead(max_concurrent=40),
            rate_limit=True,
        ),
        "ResilientClient, MockTransport (local)",
    )
    for registry in registries:
        await registry.__aenter__()
    results = await measure(cases, rounds=rounds, calls=calls)
    return results, counting


async def strict_bulkhead(url: str, calls: int) -> dict[str, tuple[float, float]]:
    """Strict mode (grant_step=1, idle_release=0): us (wall) and round trips per call,
    back to back; with a turn of the event loop between calls (each call's slot goes
    back before the next starts); and 8 tasks at once."""
    state = shared_state(url, "bench-strict")
    registry = seawall.Registry(state=state)
    g = registry.guard(
        "dep",
        policy(
            breaker=None,
            bulkhead=BULKHEAD,
            shared=seawall.Shared(
                bulkhead=seawall.GlobalBulkhead(max_concurrent=40, grant_step=1, idle_release=0)
            ),
        ),
    )

    async def back_to_back(n: int) -> None:
        for _ in range(n):
            await g.call(noop)

    async def a_turn_between(n: int) -> None:
        for _ in range(n):
            await g.call(noop)
            await asyncio.sleep(0)

    async def eight_tasks(n: int) -> None:
        async def one(k: int) -> None:
            for _ in range(k):
                await g.call(noop)
                await asyncio.sleep(0)

        await asyncio.gather(*(one(n // 8) for _ in range(8)))

    out = {}
    async with registry:
        await g.call(noop)
        for name, run in (
            ("back to back", back_to_back),
            ("a loop turn between calls", a_turn_between),
            ("8 tasks, a loop turn between calls", eight_tasks),
        ):
            await asyncio.sleep(0.05)  # the last slot back
            before = sum(state.counters.round_trips.values()) - state.counters.round_trips["sync"]
            t0 = time.perf_counter()
            await run(calls)
            elapsed = time.perf_counter() - t0
            await asyncio.sleep(0.05)  # count the last release too
            after = sum(state.counters.round_trips.values()) - state.counters.round_trips["sync"]
            out[name] = (elapsed / calls * 1e6, (after - before) / calls)
    return out


# -- 2. paced calls ------------------------------------------------------------------------


async def paced(g: seawall.Guard, rate: float, seconds: float) -> list[float]:
    """Calls at *rate* a second for *seconds*; each call's latency (s)."""
    loop_ = asyncio.get_running_loop()
    start = loop_.time()
    latencies: list[float] = []
    n = int(rate * seconds)
    for i in range(n):
        due = start + i / rate
        wait = due - loop_.time()
        if wait > 0:
            await asyncio.sleep(wait)
        t0 = time.perf_counter()
        await g.call(noop)
        latencies.append(time.perf_counter() - t0)
    return latencies


async def paced_round_trips(url: str, seconds: float) -> dict[str, float]:
    out = {}
    for name, rate, parts, shared in [
        (
            "global bulkhead, leased, at 1,000 calls/s",
            1000.0,
            {"breaker": None, "bulkhead": BULKHEAD},
            seawall.Shared(bulkhead=seawall.GlobalBulkhead(max_concurrent=40)),
        ),
        (
            "shared rate limit (1,000/s), at 500 calls/s",
            500.0,
            {"breaker": None, "rate_limit": seawall.RateLimit(rate=1000, burst=100)},
            seawall.Shared(rate_limit=True),
        ),
        (
            "advisory breaker, at 1,000 calls/s",
            1000.0,
            {"breaker": BREAKER},
            seawall.Shared(breaker="advisory"),
        ),
    ]:
        state = shared_state(url, f"bench-paced-{len(out)}")
        registry = seawall.Registry(state=state)
        g = registry.guard("dep", policy(shared=shared, **parts))
        async with registry:
            before = dict(state.counters.round_trips)
            latencies = await paced(g, rate, seconds)
            after = dict(state.counters.round_trips)
        calls = len(latencies)
        hot = (
            sum(after.values())
            - after.get("sync", 0)
            - (sum(before.values()) - before.get("sync", 0))
        )
        syncs = after.get("sync", 0) - before.get("sync", 0)
        out[name] = hot / calls
        out[name + ": syncs per second"] = syncs / seconds
    return out


# -- 3. Redis paused --------------------------------------------------------------------------


async def paused_run(
    server: Server | None, url: str | None, seconds: float
) -> dict[str, list[float]]:
    """1,000 calls/s through every shared feature; Redis paused after 1 s if *server*;
    the same policy kept local if *url* is None."""
    state = RedisState(url, namespace="bench-paused") if url is not None else None
    registry = seawall.Registry(state=state)
    shared = seawall.Shared(
        breaker="advisory",
        bulkhead=seawall.GlobalBulkhead(max_concurrent=40),
        rate_limit=True,
    )
    g = registry.guard(
        "dep",
        policy(
            breaker=BREAKER,
            bulkhead=BULKHEAD,
            rate_limit=seawall.RateLimit(rate=5000, burst=500),
            shared=shared if state is not None else None,
        ),
    )
    phases: dict[str, list[float]] = {"before": [], "first second": [], "after": []}
    async with registry:
        loop_ = asyncio.get_running_loop()
        start = loop_.time()
        rate = 1000.0
        paused_at = None
        i = 0
        while True:
            now = loop_.time()
            if now - start >= seconds:
                break
            if server is not None and paused_at is None and now - start >= 1.0:
                server.pause()
                paused_at = loop_.time()
            due = start + i / rate
            if due > now:
                await asyncio.sleep(due - now)
            t0 = time.perf_counter()
            await g.call(noop)
            took = time.perf_counter() - t0
            i += 1
            at = loop_.time() - start
            if at < 1.0:
                phases["before"].append(took)
            elif at < 2.0:
                phases["first second"].append(took)
            else:
                phases["after"].append(took)
        status = state.status if state is not None else "local"
        if server is not None:
            server.resume()
    phases["status"] = [1.0 if status == "degraded" else 0.0]
    return phases


# -- 4. sync at scale ---------------------------------------------------------------------------


def sync_at_scale(
    server: Server, replicas: int, deps: int, rounds: int, changed: int, *, mode: str = "0"
) -> float:
    """Redis CPU (us) per sync script run by *replicas* replicas of *deps* dependencies
    each, *changed* of which changed since the replica's last sync. *mode* "1": a
    registration (every dependency sent, the record's entries returned); "2": a lease
    renewal (the record's entries returned); "0": a plain sync."""
    client = server.client
    client.script_load(SYNC.source)
    key = f"{{seawall:bench-scale-{changed}-{mode}}}"
    names = [f"dep{i}" for i in range(deps)]

    def args(i: int, r: int, epoch: str, n_changed: int, mode: str) -> list[Any]:
        nonce = (i << 16) + r + 1
        head = [f"replica-{i}", "", 5000, nonce, epoch, mode]
        body: list[Any] = [n_changed]
        for d in names[:n_changed]:
            # tripped flips now and then, released grows: the counts really move
            body += [d, SUMMARY.pack(int((i + r) % 2 == 0), 1, r, 3, 0, 40, 0, 0)]
        return [*head, *body, 0, *names]

    epochs = []
    for i in range(replicas):  # registration, not measured
        reply = client.evalsha(SYNC.sha, 1, key, *args(i, 0, "", deps, "1"))
        epochs.append(reply[0].decode())
    before = client.info("commandstats")["cmdstat_evalsha"]
    for r in range(1, rounds + 1):
        pipe = client.pipeline(transaction=False)
        for i in range(replicas):
            n = deps if mode == "1" else changed
            pipe.evalsha(SYNC.sha, 1, key, *args(i, r, epochs[i], n, mode))
        pipe.execute()
    after = client.info("commandstats")["cmdstat_evalsha"]
    return (after["usec"] - before["usec"]) / (after["calls"] - before["calls"])


# -- main ------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    return quantile(values, q) * 1e3 if values else float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sync-only", action="store_true", help="section 4 alone")
    args = parser.parse_args()
    rounds, calls, seconds = (5, 2_000, 2.0) if args.quick else (15, 5_000, 4.0)
    print(machine_summary())
    print(versions("redis", "httpx", "anyio"))
    server = Server()
    info = server.client.info("server")
    print(f"redis-server {info['redis_version']} on loopback")
    registries: list[seawall.Registry] = []
    try:
        if not args.sync_only:
            before = server.commands()
            results, counting = await hot_path(
                server.url, rounds=rounds, calls=calls, registries=registries
            )
            after = server.commands()
            print_table(results, GROUPS)
            print(f"\ncontention (wall/cpu): {contention(results):.2f}")
            print("\nRedis round trips per call (besides the sync task's), per case:")
            for name in counting.states:
                print(f"  {name:<62} {counting.per_call(name):.5f}")
            print(f"Redis commands during section 1: {delta(before, after)}")
            for registry in registries:
                await registry.aclose()

            print("\nstrict global bulkhead (grant_step=1, idle_release=0):")
            for name, (us, trips) in (
                await strict_bulkhead(server.url, 496 if args.quick else 2000)
            ).items():
                print(
                    f"  {name:<36} {us:8.1f} us per call (wall), {trips:.2f} round trips per call"
                )

            print(
                f"\n2. paced calls for {seconds:g} s: Redis round trips per call (the sync task's aside)"
            )
            for name, value in (await paced_round_trips(server.url, seconds)).items():
                print(f"  {name:<62} {value:.4f}")

            print(
                "\n3. 1,000 calls/s through every shared feature; Redis paused (SIGSTOP) after 1 s"
            )
            local = await paused_run(None, None, 3.0)
            base = await paused_run(None, server.url, 3.0)
            hit = await paused_run(server, server.url, 3.0 if args.quick else 4.0)
            runs = (("local (no Redis)", local), ("Redis up", base), ("Redis paused at 1 s", hit))
            for label, data in runs:
                for phase in ("before", "first second", "after"):
                    xs = data[phase]
                    if xs:
                        print(
                            f"  {label:<22} {phase:<13} calls {len(xs):>5}  p50 {pct(xs, 0.5):7.3f} ms  "
                            f"p99 {pct(xs, 0.99):7.3f} ms  max {max(xs) * 1e3:7.3f} ms"
                        )
            print(f"  degraded at the end of the paused run: {bool(hit['status'][0])}")

        r, d = (100, 10)
        print(f"\n4. sync at scale, {r} replicas x {d} dependencies: Redis CPU per sync")
        n_rounds, repeats = (5, 2) if args.quick else (20, 5)
        cases = [
            ("0 of 10 dependencies changed since the last sync", 0, "0"),
            ("1 of 10 changed", 1, "0"),
            ("all 10 changed", d, "0"),
            ("lease renewal (once per lease), none changed", 0, "2"),
            ("registration (once per replica start), all sent", d, "1"),
        ]
        seen: dict[str, list[float]] = {label: [] for label, _, _ in cases}
        for _ in range(repeats):  # interleaved, so that a slow phase hits every case
            for label, changed, mode in cases:
                seen[label].append(sync_at_scale(server, r, d, n_rounds, changed, mode=mode))
            server.client.flushall()
        for label, values in seen.items():
            values.sort()
            print(
                f"  {label:<50} median {values[len(values) // 2]:6.1f} us "
                f"(range {values[0]:.1f}-{values[-1]:.1f}, {repeats} runs)"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
