"""The outbox's costs: what enqueue adds to a transaction, and how fast a dispatcher drains.

    python bench/outbox.py              # full run (about 4 minutes)
    python bench/outbox.py --quick      # smoke run (about a minute)
    python bench/outbox.py --section enqueue|dispatch|latency

Needs PostgreSQL installed (a throwaway server is started on a loopback port,
fsync off, as the tests do) and uvicorn (the loopback upstream, a child
process).

1. **Enqueue overhead.** One business INSERT plus COMMIT through an
   ``AsyncSession``; the same plus ``outbox.enqueue``; the same plus a second
   plain one-row INSERT, on SQLite (WAL, a file) and PostgreSQL (loopback).
   Every case runs in every round, in a shuffled order; a case's figure is
   the median of its transactions in a round, differences are taken within a
   round, and the median over rounds is reported (these 2-core machines
   change speed within seconds).
2. **Dispatch throughput**, pending to succeeded, entries a second: the full
   ResilientClient stack (the default Policy) over ``httpx.MockTransport``
   (the database's cost only) and over a loopback uvicorn server; 1 and 4
   dispatchers (in one process) on PostgreSQL, 1 on SQLite; and a raw
   ``httpx.AsyncClient`` loop POSTing to the same server at the same
   concurrency. Database round trips per entry count every statement and
   every BEGIN and COMMIT the dispatchers sent.
3. **Commit to upstream receipt**, in process: a dispatcher idles (poll
   interval 1 s); entries are enqueued one at a time and the MockTransport
   handler notes when each arrives.

structlog is configured once to a null sink filtering at INFO (the outbox
logs one ``seawall.outbox.transition`` per result at info, as an app would
keep them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import sqlalchemy as sa
import structlog
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "outbox"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_summary, versions
from outbox_pg_server import PgServer

import seawall
from seawall.outbox import Outbox, configure_sqlite

BODY = b'{"id":"ch_1","status":"succeeded"}'


class Recorded:
    """Counts the results the dispatchers recorded as succeeded, from their
    ``seawall.outbox.transition`` events (logged once the fenced write came back ours):
    the bench learns that a drain is over without polling the database."""

    def __init__(self) -> None:
        self.n = 0
        self.target = 0
        self.done: anyio.Event | None = None

    def expect(self, target: int) -> anyio.Event:
        self.n, self.target, self.done = 0, target, anyio.Event()
        return self.done

    def __call__(self, logger: Any, method: str, event_dict: Any) -> Any:
        if event_dict.get("event") == "seawall.outbox.transition" and (
            event_dict.get("to_state") == "succeeded"
        ):
            self.n += 1
            if self.n >= self.target and self.done is not None:
                self.done.set()
        return event_dict


RECORDED = Recorded()


def configure_structlog() -> None:
    import logging

    structlog.reset_defaults()
    structlog.configure(
        # structlog's default processors (ConsoleRenderer included), a counter first
        processors=[RECORDED, *structlog.get_config()["processors"]],
        logger_factory=structlog.ReturnLoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,
    )


def sqlite_engine(path: str, **kw: Any) -> AsyncEngine:
    return configure_sqlite(create_async_engine(f"sqlite+aiosqlite:///{path}", **kw))


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- 1. enqueue overhead ----------------------------------------------------------------


async def enqueue_section(dbs: dict[str, str], rounds: int, per_case: int) -> dict[str, Any]:
    return {db: await enqueue_one(db, url, rounds, per_case) for db, url in dbs.items()}


async def enqueue_one(db: str, url: str, rounds: int, per_case: int) -> dict[str, float]:
    engine = sqlite_engine(url) if db == "sqlite" else create_async_engine(url)
    meta = sa.MetaData()
    orders = sa.Table(
        "bench_orders",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("amount", sa.Integer),
        sa.Column("note", sa.Text),
    )
    audit = sa.Table(
        "bench_audit",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("what", sa.Text),
    )
    registry = seawall.Registry()
    registry.add("payments", base_url="http://bench.invalid")
    outbox = Outbox(registry, engine, table=f"bench_outbox_{uuid.uuid4().hex[:6]}")
    async with engine.begin() as conn:
        await conn.run_sync(meta.drop_all)
        await conn.run_sync(meta.create_all)
    await outbox.create_schema()
    insert_order = orders.insert()
    insert_audit = audit.insert()

    async def plain(s: AsyncSession) -> None:
        await s.execute(insert_order, {"amount": 100, "note": "order"})

    async def plus_insert(s: AsyncSession) -> None:
        await s.execute(insert_order, {"amount": 100, "note": "order"})
        await s.execute(insert_audit, {"what": "charge order 42 for 100 eur"})

    async def plus_enqueue(s: AsyncSession) -> None:
        await s.execute(insert_order, {"amount": 100, "note": "order"})
        await outbox.enqueue(
            s, "payments", "POST", "/v1/charges", json={"amount": 100, "currency": "eur"}
        )

    cases: dict[str, Callable[[AsyncSession], Awaitable[None]]] = {
        "INSERT + COMMIT": plain,
        "+ a plain one-row INSERT": plus_insert,
        "+ outbox.enqueue": plus_enqueue,
    }
    per_round: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(rounds + 1):  # round 0 warms up
        order = list(cases)
        random.shuffle(order)
        for name in order:
            fn = cases[name]
            times = []
            for _ in range(per_case):
                t0 = time.perf_counter()
                async with AsyncSession(engine) as s, s.begin():
                    await fn(s)
                times.append(time.perf_counter() - t0)
            if r:
                per_round[name].append(med(times) * 1000)
    base = per_round["INSERT + COMMIT"]
    extra_insert = [b - a for a, b in zip(base, per_round["+ a plain one-row INSERT"], strict=True)]
    extra_enqueue = [b - a for a, b in zip(base, per_round["+ outbox.enqueue"], strict=True)]
    found = {
        "transaction": med(base),
        "plus_insert": med(per_round["+ a plain one-row INSERT"]),
        "plus_enqueue": med(per_round["+ outbox.enqueue"]),
        "extra_insert": med(extra_insert),
        "extra_enqueue": med(extra_enqueue),
        # The aim's reading: what enqueue adds against what a plain one-row INSERT adds.
        "ratio": med([e / i for e, i in zip(extra_enqueue, extra_insert, strict=True) if i > 0]),
        # The looser one: the whole transaction with enqueue against one with a second INSERT.
        "tx_ratio": med(
            [
                e / i
                for e, i in zip(
                    per_round["+ outbox.enqueue"],
                    per_round["+ a plain one-row INSERT"],
                    strict=True,
                )
            ]
        ),
    }
    await registry.aclose()
    await engine.dispose()
    return found


# -- 2. dispatch throughput ---------------------------------------------------------------


def serve() -> None:
    """Child process: uvicorn on 127.0.0.1 answering every request 200 with a small JSON body."""
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": BODY})

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(config).run(sockets=[sock])


class Upstream:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    async def ready(self) -> None:
        async with httpx.AsyncClient(base_url=self.url) as c:
            for _ in range(200):
                try:
                    await c.get("/")
                    return
                except httpx.TransportError:
                    await anyio.sleep(0.05)
        raise RuntimeError("the uvicorn child does not answer")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class RoundTrips:
    """Statements sent through an engine, and the BEGINs and COMMITs of real transactions
    (under AUTOCOMMIT SQLAlchemy's begin and commit send nothing)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.n = 0
        self.engine = engine
        event.listen(engine.sync_engine, "before_cursor_execute", self._statement)
        for name in ("begin", "commit", "rollback"):
            event.listen(engine.sync_engine, name, self._transaction)

    def _statement(self, *args: Any, **kwargs: Any) -> None:
        self.n += 1

    def _transaction(self, conn: Any) -> None:
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            self.n += 1

    def close(self) -> None:
        event.remove(self.engine.sync_engine, "before_cursor_execute", self._statement)
        for name in ("begin", "commit", "rollback"):
            event.remove(self.engine.sync_engine, name, self._transaction)


async def fill(outbox: Outbox, n: int) -> None:
    async with AsyncSession(outbox.engine) as s, s.begin():
        for i in range(n):
            await outbox.enqueue(s, "payments", "POST", "/v1/charges", json={"amount": i})


async def drain_with(
    url: str,
    db: str,
    transport: httpx.AsyncBaseTransport | None,
    base_url: str,
    n: int,
    dispatchers: int,
    concurrency: int,
    batch_size: int,
    profiler: Any = None,
) -> dict[str, float]:
    """Enqueue n entries, then time dispatchers until all succeeded."""
    registry = seawall.Registry()
    registry.add(
        "payments",
        base_url=base_url,
        transport=transport,
        policy=seawall.Policy(pool=seawall.Pool(max_connections=max(100, 4 * concurrency))),
    )
    engine = sqlite_engine(url) if db == "sqlite" else create_async_engine(url, pool_size=10)
    table = f"bench_outbox_{uuid.uuid4().hex[:8]}"
    outbox = Outbox(registry, engine, table=table)
    await outbox.create_schema()
    await fill(outbox, n)
    t = outbox.table
    done_query = sa.select(sa.func.count()).select_from(t).where(t.c.state == "succeeded")
    done = RECORDED.expect(n)
    trips = RoundTrips(engine)
    # Every other setting (poll_interval, flush_interval, ...) at its default.
    ds = [
        outbox.dispatcher(concurrency=concurrency, batch_size=batch_size)
        for _ in range(dispatchers)
    ]
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    if profiler is not None:
        profiler.enable()
    async with anyio.create_task_group() as tg:
        for d in ds:
            tg.start_soon(d.run)
        await done.wait()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        if profiler is not None:
            profiler.disable()
        for d in ds:
            d.stop()
    trips.close()
    async with engine.connect() as conn:  # the events told the truth
        assert (await conn.execute(done_query)).scalar() == n
    await registry.aclose()
    await engine.dispose()
    return {"per_s": n / elapsed, "trips": trips.n / n, "cpu_ms": cpu / n * 1000}


async def raw_loop(base_url: str, n: int, concurrency: int) -> float:
    """A raw httpx POST loop at the same concurrency: the upstream's own ceiling."""
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=base_url, limits=limits) as client:
        left = n
        t0 = time.perf_counter()

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                r = await client.post("/v1/charges", json={"amount": left})
                r.raise_for_status()

        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
        return n / (time.perf_counter() - t0)


async def dispatch_section(
    dbs: dict[str, str], rounds: int, n: int, only: list[str] | None = None
) -> dict[str, Any]:
    loopback = "loopback, PostgreSQL, 1 dispatcher (8 / 32)"
    mock = httpx.MockTransport(lambda request: httpx.Response(200, content=BODY))
    upstream = Upstream()
    await upstream.ready()
    cases: dict[str, Callable[[], Awaitable[dict[str, float]]]] = {
        "MockTransport, PostgreSQL, 1 dispatcher (8 / 32)": lambda: drain_with(
            dbs["postgresql"], "postgresql", mock, "http://bench.invalid", n, 1, 8, 32
        ),
        "MockTransport, PostgreSQL, 1 dispatcher (32 / 64)": lambda: drain_with(
            dbs["postgresql"], "postgresql", mock, "http://bench.invalid", n, 1, 32, 64
        ),
        "MockTransport, PostgreSQL, 4 dispatchers (8 / 32)": lambda: drain_with(
            dbs["postgresql"], "postgresql", mock, "http://bench.invalid", n, 4, 8, 32
        ),
        "MockTransport, SQLite, 1 dispatcher (8 / 32)": lambda: drain_with(
            dbs["sqlite"], "sqlite", mock, "http://bench.invalid", n, 1, 8, 32
        ),
        loopback: lambda: drain_with(
            dbs["postgresql"], "postgresql", None, upstream.url, n, 1, 8, 32
        ),
    }
    if only:
        cases = {name: fn for name, fn in cases.items() if any(w in name for w in only)}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    raw: list[float] = []
    ratio: list[float] = []
    try:
        for _ in range(rounds):
            order = [*cases, "raw"] if loopback in cases else list(cases)
            random.shuffle(order)
            got: dict[str, float] = {}
            for name in order:
                if name == "raw":
                    got["raw"] = await raw_loop(upstream.url, n, 8)
                    raw.append(got["raw"])
                else:
                    found = await cases[name]()
                    results[name].append(found)
                    got[name] = found["per_s"]
            if loopback in cases:
                ratio.append(got[loopback] / got["raw"])
    finally:
        upstream.stop()
    table = {
        name: {k: med([r[k] for r in rs]) for k in ("per_s", "trips", "cpu_ms")}
        for name, rs in results.items()
    }
    return {"cases": table, "raw": med(raw), "loopback_vs_raw": med(ratio)}


# -- 3. commit to receipt -----------------------------------------------------------------


async def latency_section(dbs: dict[str, str], samples: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for db, url in dbs.items():
        lags = await latency_one(db, url, samples)
        out[db] = med(lags)
        out[f"{db}_p90"] = lags[int(len(lags) * 0.9)] if lags else float("nan")
    return out


async def latency_one(db: str, url: str, samples: int) -> list[float]:
    arrived: dict[str, float] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        arrived[request.headers["idempotency-key"]] = time.perf_counter()
        return httpx.Response(200, content=BODY)

    registry = seawall.Registry()
    registry.add(
        "payments", base_url="http://bench.invalid", transport=httpx.MockTransport(handler)
    )
    engine = sqlite_engine(url) if db == "sqlite" else create_async_engine(url)
    outbox = Outbox(registry, engine, table=f"bench_outbox_{uuid.uuid4().hex[:8]}")
    await outbox.create_schema()
    committed: dict[str, float] = {}
    async with outbox.dispatcher(poll_interval=1.0):
        await anyio.sleep(0.2)
        for _ in range(samples):
            async with AsyncSession(engine) as s:
                async with s.begin():
                    ref = await outbox.enqueue(s, "payments", "POST", "/v1/charges", json={})
                committed[ref.idempotency_key] = time.perf_counter()
            for _ in range(500):
                if ref.idempotency_key in arrived:
                    break
                await anyio.sleep(0.001)
            await anyio.sleep(0.005)
    lags = sorted((arrived[k] - committed[k]) * 1000 for k in committed if k in arrived)
    await registry.aclose()
    await engine.dispose()
    return lags


async def profile_drain(n: int) -> None:
    import cProfile
    import pstats

    configure_structlog()
    server = PgServer.create()
    server.start()
    try:
        url = server.create_database("profile")
        mock = httpx.MockTransport(lambda request: httpx.Response(200, content=BODY))
        await drain_with(url, "postgresql", mock, "http://bench.invalid", 300, 1, 8, 32)  # warm
        profiler = cProfile.Profile()
        found = await drain_with(
            url, "postgresql", mock, "http://bench.invalid", n, 1, 8, 32, profiler
        )
        print(found)
        pstats.Stats(profiler).sort_stats(os.environ.get("SORT", "tottime")).print_stats(60)
    finally:
        server.destroy()


# -- main ----------------------------------------------------------------------------------


async def amain(args: argparse.Namespace) -> None:
    configure_structlog()
    server = PgServer.create()
    server.start()
    tmp = tempfile.mkdtemp(prefix="seawall-bench-")
    try:
        dbs = {
            "sqlite": os.path.join(tmp, "bench.db"),
            "postgresql": server.create_database("bench"),
        }
        print(machine_summary())
        print(versions("seawall", "sqlalchemy", "asyncpg", "aiosqlite", "httpx"))
        print(
            f"SQLite {__import__('sqlite3').sqlite_version} (WAL); PostgreSQL on loopback, fsync=off\n"
        )
        if args.section in ("all", "enqueue"):
            found = await enqueue_section(dbs, args.rounds, args.per_case)
            print(
                f"## Enqueue overhead (median ms per transaction, {args.rounds} rounds x {args.per_case})\n"
            )
            print(
                "| database | INSERT + COMMIT | + one-row INSERT | + enqueue | enqueue adds "
                "| one-row INSERT adds | adds / adds | transaction / transaction |"
            )
            print("|---|---|---|---|---|---|---|---|")
            for db, f in found.items():
                print(
                    f"| {db} | {f['transaction']:.2f} | {f['plus_insert']:.2f} | {f['plus_enqueue']:.2f} "
                    f"| +{f['extra_enqueue']:.2f} | +{f['extra_insert']:.2f} | {f['ratio']:.2f}x "
                    f"| {f['tx_ratio']:.2f}x |"
                )
            print()
        if args.section in ("all", "dispatch"):
            found = await dispatch_section(dbs, args.dispatch_rounds, args.entries, args.cases)
            print(
                f"## Dispatch throughput ({args.entries} entries, median of {args.dispatch_rounds} rounds; concurrency / batch)\n"
            )
            print("| case | entries/s | DB round trips / entry | CPU ms / entry |")
            print("|---|---|---|---|")
            for name, f in found["cases"].items():
                print(f"| {name} | {f['per_s']:.0f} | {f['trips']:.3f} | {f['cpu_ms']:.2f} |")
            if found["raw"] == found["raw"]:  # not NaN: the loopback case ran
                print(
                    f"| raw httpx POST loop, loopback, concurrency 8 | {found['raw']:.0f} | - | - |"
                )
                print(
                    f"\nloopback dispatcher / raw httpx loop (per round): {found['loopback_vs_raw']:.0%}\n"
                )
        if args.section in ("all", "latency"):
            found = await latency_section(dbs, args.samples)
            print(
                f"## Commit to upstream receipt, in process ({args.samples} entries one at a time)\n"
            )
            for db in ("sqlite", "postgresql"):
                print(f"- {db}: p50 {found[db]:.1f} ms, p90 {found[db + '_p90']:.1f} ms")
    finally:
        server.destroy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--section", default="all", choices=("all", "enqueue", "dispatch", "latency")
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-case", type=int, default=300)
    parser.add_argument("--dispatch-rounds", type=int, default=3)
    parser.add_argument("--entries", type=int, default=3000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument(
        "--cases",
        nargs="+",
        metavar="TEXT",
        help="dispatch: only the cases whose name holds one of these (e.g. SQLite '8 / 32')",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile one MockTransport drain")
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return
    if args.profile:
        asyncio.run(profile_drain(args.entries))
        return
    if args.quick:
        args.rounds, args.per_case, args.dispatch_rounds, args.entries, args.samples = (
            2,
            100,
            1,
            1000,
            50,
        )
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
