"""seawall.db.watch: a call out from a task that holds a transaction warns or raises."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

import seawall
from conftest import session
from seawall.db import CallInTransactionError, SeawallWarning, allow_calls_in_transaction, watch
from seawall.testing._upstream import FaultyUpstream

pytestmark = pytest.mark.anyio


@pytest.fixture
def client(upstream: FaultyUpstream) -> seawall.ResilientClient:
    return seawall.ResilientClient(
        "payments", base_url=upstream.url, policy=seawall.Policy(retry=None, breaker=None)
    )


async def test_error_raises_inside_the_transaction_not_after_commit(
    engine: AsyncEngine, client: seawall.ResilientClient, upstream: FaultyUpstream
) -> None:
    stop = watch(engine, action="error")
    try:
        async with session(engine) as s:

            async def in_transaction() -> None:
                async with s.begin():
                    await s.execute(sa.text("SELECT 1"))
                    await client.post("/v1/charges", json={})

            with pytest.raises(CallInTransactionError, match="'payments' started while this task"):
                await in_transaction()
            assert upstream.count() == 0  # refused before anything was sent
            # After the commit the same call is fine.
            async with s.begin():
                await s.execute(sa.text("SELECT 1"))
            response = await client.post("/v1/charges", json={})
        assert response.status_code == 200
        assert upstream.count() == 1
    finally:
        stop()
        await client.aclose()


async def test_warn_warns_and_logs(engine: AsyncEngine, client: seawall.ResilientClient) -> None:
    stop = watch(engine)
    try:
        async with session(engine) as s, s.begin():
            await s.execute(sa.text("SELECT 1"))
            with (
                structlog.testing.capture_logs() as logs,
                pytest.warns(SeawallWarning, match="docs/transactions.md"),
            ):
                await client.get("/")
        events = [e for e in logs if e["event"] == "seawall.db.call_in_transaction"]
        assert events
        assert events[0]["dependency"] == "payments"
        assert "password" not in str(events[0])
    finally:
        stop()
        await client.aclose()


async def test_a_guard_call_is_checked_too(engine: AsyncEngine) -> None:
    stop = watch(engine, action="error")
    g = seawall.guard("db-side", seawall.Policy(retry=None, breaker=None))

    async def work() -> int:
        return 1

    try:
        async with session(engine) as s, s.begin():
            await s.execute(sa.text("SELECT 1"))
            with pytest.raises(CallInTransactionError):
                await g.call(work)
            with allow_calls_in_transaction():
                assert await g.call(work) == 1
        assert await g.call(work) == 1
    finally:
        stop()


async def test_other_tasks_are_not_blamed(
    engine: AsyncEngine, client: seawall.ResilientClient
) -> None:
    """Tracking is per task: a transaction in one task says nothing of another."""
    stop = watch(engine, action="error")
    held = anyio.Event()
    done = anyio.Event()
    statuses: list[int] = []

    async def holder() -> None:
        async with session(engine) as s, s.begin():
            await s.execute(sa.text("SELECT 1"))
            held.set()
            await done.wait()

    async def caller() -> None:
        await held.wait()
        statuses.append((await client.get("/")).status_code)
        done.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            tg.start_soon(caller)
        assert statuses == [200]
    finally:
        stop()
        await client.aclose()


async def test_stop_unwatches_and_a_rollback_ends_the_transaction(
    engine: AsyncEngine, client: seawall.ResilientClient
) -> None:
    stop = watch(engine, action="error")
    async with session(engine) as s:
        async with s.begin():
            await s.execute(sa.text("SELECT 1"))
            await s.rollback()
        assert (await client.get("/")).status_code == 200
    stop()
    stop()  # idempotent
    async with session(engine) as s, s.begin():
        await s.execute(sa.text("SELECT 1"))
        assert (await client.get("/")).status_code == 200
    await client.aclose()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r'action\): must be "warn" or "error", got \'raise\''):
        watch(object(), action="raise")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"engine\): must be a SQLAlchemy"):
        watch(object())


def test_unwatched_costs_one_list_test() -> None:
    from seawall import _engine

    assert _engine.call_hooks == []


def _sync_engine_usable(engine: Any) -> None:
    assert isinstance(engine.sync_engine, sa.engine.Engine)


async def test_httpx_plain_client_is_not_checked(
    engine: AsyncEngine, upstream: FaultyUpstream
) -> None:
    """Only seawall calls are seen (a plain httpx client goes around the engine)."""
    _sync_engine_usable(engine)
    stop = watch(engine, action="error")
    try:
        async with (
            session(engine) as s,
            s.begin(),
            httpx.AsyncClient(base_url=upstream.url) as plain,
        ):
            await s.execute(sa.text("SELECT 1"))
            assert (await plain.get("/")).status_code == 200
    finally:
        stop()
