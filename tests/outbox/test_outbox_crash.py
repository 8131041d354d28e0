"""Crashes and concurrency, with real processes and real time (short leases).

Dispatchers are ``seawall outbox run`` processes; the upstream is a real
loopback server that records every request and its idempotency key. What
is asserted is behaviour (every entry succeeds, every request carries its
entry's key, none is lost, none is sent twice where the design says so),
never how fast.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from outbox_pg_server import PgServer, find_bindir
from outbox_procs import environment, start, stop, write_app
from sqlalchemy.pool import NullPool

import seawall
from conftest import eventually, make_engine, plain_policy, session
from seawall.outbox import Outbox
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio


class Run:
    """One scenario: the app module, an Outbox in the test on the same table, dispatchers."""

    def __init__(
        self, directory: Path, db_url: str, upstream: FaultyUpstream, **settings: Any
    ) -> None:
        self.directory = directory
        self.upstream = upstream
        self.table = f"outbox_{uuid.uuid4().hex[:10]}"
        self.target = write_app(directory)
        self.env = environment(
            directory, upstream=upstream.url, db_url=db_url, table=self.table, **settings
        )
        registry = seawall.Registry()
        registry.add("payments", base_url=upstream.url, policy=plain_policy())
        # NullPool: the test's own connections survive pg_terminate_backend and restarts.
        self.engine = make_engine(db_url, poolclass=NullPool)
        self.outbox = Outbox(registry, self.engine, table=self.table)
        self.procs: list[subprocess.Popen[str]] = []

    def dispatcher(self, *args: str) -> subprocess.Popen[str]:
        proc = start(self.directory, self.env, "run", self.target, "--poll-interval", "0.1", *args)
        self.procs.append(proc)
        return proc

    async def enqueue(self, n: int) -> list[Any]:
        async with session(self.engine) as s, s.begin():
            return [
                await self.outbox.enqueue(s, "payments", "POST", "/v1/charges", json={"i": i})
                for i in range(n)
            ]

    async def states(self) -> collections.Counter[str]:
        t = self.outbox.table
        async with self.engine.connect() as conn:
            found = await conn.execute(sa.select(t.c.state, sa.func.count()).group_by(t.c.state))
            return collections.Counter(dict(found.all()))

    async def all_succeeded(self, n: int) -> bool:
        return (await self.states())["succeeded"] == n

    def keys_seen(self) -> collections.Counter[str | None]:
        return collections.Counter(r.idempotency_key for r in self.upstream.requests("/v1/charges"))

    async def close(self) -> None:
        for proc in self.procs:
            await anyio.to_thread.run_sync(stop, proc)
        await self.outbox.registry.aclose()
        await self.engine.dispose()


@pytest.fixture
async def run_factory(tmp_path: Path, upstream: FaultyUpstream) -> AsyncIterator[Any]:
    runs: list[Run] = []

    def make(db_url: str, **settings: Any) -> Run:
        run = Run(tmp_path, db_url, upstream, **settings)
        runs.append(run)
        return run

    yield make
    for run in runs:
        await run.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql"])
async def test_four_dispatchers_two_thousand_entries_each_key_once(
    db_url: str, run_factory: Any
) -> None:
    run = run_factory(db_url)
    await run.outbox.create_schema()
    refs = await run.enqueue(2000)
    for _ in range(4):
        run.dispatcher()
    await eventually(lambda: run.all_succeeded(2000), within=240)
    seen = run.keys_seen()
    assert set(seen) == {r.idempotency_key for r in refs}
    assert set(seen.values()) == {1}  # each key reached the upstream exactly once
    await _each_claimed_once_by_all(run)


async def _each_claimed_once_by_all(run: Run) -> None:
    """No entry was claimed twice (each claim bumps the token), and every dispatcher
    took part (its log shows entries it recorded)."""
    t = run.outbox.table
    async with run.engine.connect() as conn:
        tokens = (await conn.execute(sa.select(sa.func.max(t.c.lease_token)))).scalar()
    assert tokens == 1
    for proc in run.procs:
        log: Path = proc.log  # type: ignore[attr-defined]
        text = await anyio.Path(log).read_text()
        assert "to_state=succeeded" in text, f"dispatcher {proc.pid} sent nothing"


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_two_dispatchers_on_sqlite_each_key_once(db_url: str, run_factory: Any) -> None:
    run = run_factory(db_url)
    await run.outbox.create_schema()
    refs = await run.enqueue(300)
    run.dispatcher()
    run.dispatcher()
    await eventually(lambda: run.all_succeeded(300), within=120)
    seen = run.keys_seen()
    assert set(seen) == {r.idempotency_key for r in refs}
    assert set(seen.values()) == {1}
    await _each_claimed_once_by_all(run)


@pytest.mark.slow
async def test_sigkill_mid_send_another_dispatcher_completes_after_the_lease(
    db_url: str, run_factory: Any, upstream: FaultyUpstream
) -> None:
    run = run_factory(db_url, send_deadline=3, lease_margin=1)
    await run.outbox.create_schema()
    upstream.route("/v1/charges", *[Fault.latency(2.0)] * 8, Fault.ok())
    first = run.dispatcher()
    refs = await run.enqueue(8)
    await eventually(lambda: upstream.count("/v1/charges") == 8, within=60)
    first.send_signal(signal.SIGKILL)  # eight sends in flight
    await anyio.to_thread.run_sync(first.wait)
    assert (await run.states())["dispatching"] == 8
    run.dispatcher()
    await eventually(lambda: run.all_succeeded(8), within=120)
    seen = run.keys_seen()
    # Every entry was resent once the lease expired, with its own key: nothing lost.
    assert seen == collections.Counter({r.idempotency_key: 2 for r in refs})


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_terminated_sessions_mid_send_lose_nothing(
    db_url: str, run_factory: Any, upstream: FaultyUpstream
) -> None:
    run = run_factory(db_url, send_deadline=3, lease_margin=1)
    await run.outbox.create_schema()
    upstream.route("/v1/charges", *[Fault.latency(1.0)] * 8, Fault.ok())
    run.dispatcher()
    refs = await run.enqueue(8)
    await eventually(lambda: upstream.count("/v1/charges") == 8, within=60)
    async with run.engine.connect() as conn:
        killed = (
            await conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        ).scalar()
    assert killed >= 1  # the dispatcher's pooled sessions
    await eventually(lambda: run.all_succeeded(8), within=120)
    seen = run.keys_seen()
    # Each entry reached the upstream with its own key; a result the dead session
    # could not record was recorded on a new one, or resent (same key) after the lease.
    assert set(seen) == {r.idempotency_key for r in refs}
    assert all(n in (1, 2) for n in seen.values())


@pytest.mark.slow
async def test_postgres_down_for_five_seconds_mid_run(
    tmp_path: Path, run_factory: Any, upstream: FaultyUpstream
) -> None:
    bindir = find_bindir()
    if bindir is None:
        if _ci():
            pytest.fail("PostgreSQL is not installed")
        pytest.skip("PostgreSQL is not installed")
    server = PgServer.create(bindir)  # a server of its own: this one is stopped
    server.start()
    run: Run | None = None
    try:
        run = run_factory(server.create_database("down"), send_deadline=3, lease_margin=1)
        await run.outbox.create_schema()
        upstream.route("/v1/charges", Fault.latency(0.2))
        run.dispatcher("--concurrency", "4")
        refs = await run.enqueue(60)
        await eventually(lambda: upstream.count("/v1/charges") >= 8, within=60)
        await anyio.to_thread.run_sync(server.stop, "immediate")
        await anyio.sleep(5)  # the outage itself (the scenario), not a timer to wait out
        await anyio.to_thread.run_sync(server.start)
        await eventually(lambda: run.all_succeeded(60), within=180)
        seen = run.keys_seen()
        assert set(seen) == {r.idempotency_key for r in refs}  # nothing lost
        assert all(p.poll() is None for p in run.procs)  # the dispatcher rode it out
    finally:
        if run is not None:
            for proc in run.procs:
                await anyio.to_thread.run_sync(stop, proc)
        server.destroy()


def _ci() -> bool:
    import os

    return os.environ.get("CI") == "true"


ENQUEUE_AND_HANG = """
import asyncio, sys
from sqlalchemy.ext.asyncio import AsyncSession
from outbox_app import outbox

async def main():
    async with AsyncSession(outbox.engine) as s, s.begin():
        for i in range(5):
            await outbox.enqueue(s, "payments", "POST", "/v1/charges", json={"i": i})
        await s.flush()
        print("enqueued", flush=True)
        await asyncio.sleep(3600)  # killed before the commit

asyncio.run(main())
"""


async def test_sigkill_mid_enqueue_before_commit_leaves_nothing(
    db_url: str, run_factory: Any, upstream: FaultyUpstream
) -> None:
    run = run_factory(db_url)
    await run.outbox.create_schema()
    app = subprocess.Popen(  # noqa: ASYNC220 - started once, read in a thread
        [sys.executable, "-c", ENQUEUE_AND_HANG],
        cwd=run.directory,
        env=run.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert app.stdout is not None
        line = await anyio.to_thread.run_sync(app.stdout.readline)
        assert line.strip() == "enqueued"
    finally:
        app.send_signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(app.wait)
        if app.stdout is not None:
            app.stdout.close()
    report = await run.outbox.dispatcher().drain()
    assert not report.busy
    assert sum((await run.states()).values()) == 0
    assert upstream.count() == 0
