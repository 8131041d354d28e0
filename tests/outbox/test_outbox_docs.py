"""The shapes docs/transactions.md shows are working code: run them as written."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import seawall
import seawall.db
from conftest import plain_policy
from seawall.outbox import Outbox
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

DOC = Path(__file__).parents[2] / "docs" / "transactions.md"


def _block(starting: str) -> str:
    for block in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S):
        if block.lstrip().startswith(starting) or f"\n{starting}" in block:
            return str(block)
    raise AssertionError(f"no python block with {starting!r} in {DOC}")


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    amount: Mapped[int]
    status: Mapped[str]
    charge_key: Mapped[str | None] = mapped_column(default=None)


@pytest.fixture
async def shop(
    engine: Any, registry: seawall.Registry, upstream: FaultyUpstream, clock: Any
) -> AsyncIterator[dict[str, Any]]:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    outbox = Outbox(registry, engine, clock=clock)
    await outbox.create_schema()
    yield {
        "engine": engine,
        "outbox": outbox,
        "payments": registry.client("payments"),
        "Order": Order,
        "AsyncSession": AsyncSession,
        "seawall": seawall,
        "select": sa.select,
    }
    await registry.aclose()


async def test_shape_1_enqueue_in_the_transaction(
    shop: dict[str, Any], upstream: FaultyUpstream
) -> None:
    exec(_block("from sqlalchemy.ext.asyncio import AsyncSession"), shop)
    await shop["pay"](7, 250)
    await shop["outbox"].dispatcher().drain()
    [request] = upstream.requests()
    assert request.idempotency_key == "order-7"
    async with AsyncSession(shop["engine"]) as s:
        assert (await s.get(Order, 7)).status == "accepted"  # type: ignore[union-attr]


async def test_shape_2_two_short_transactions_around_the_call(
    shop: dict[str, Any], upstream: FaultyUpstream
) -> None:
    exec(_block("async def pay_now("), shop)
    upstream.route("/v1/charges", Fault.ok(), Fault.error(402))
    stop = seawall.db.watch(shop["engine"], action="error")  # no call inside a transaction
    try:
        assert await shop["pay_now"](1, 100) == "paid"
        assert await shop["pay_now"](2, 100) == "declined"
    finally:
        stop()
    assert [r.idempotency_key for r in upstream.requests()] == ["order-1", "order-2"]


async def test_the_wrong_shape_is_caught_by_watch(
    shop: dict[str, Any], upstream: FaultyUpstream
) -> None:
    block = _block('seawall.db.watch(engine, action="error")\n\nasync with')
    code = "async def wrong():\n" + "\n".join("    " + line for line in block.splitlines())
    exec(code, shop)
    with pytest.raises(seawall.db.CallInTransactionError):
        await shop["wrong"]()
    assert upstream.count() == 0
    seawall.db._engine.call_hooks.clear()


def test_plain_policy_is_used() -> None:
    assert plain_policy().retry is None
