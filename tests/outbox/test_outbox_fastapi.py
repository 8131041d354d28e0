"""seawall.fastapi.install(app, registry, outbox=outbox): a dispatcher for the app's life."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.ext.asyncio import AsyncSession

import seawall
import seawall.fastapi
from conftest import make_engine, plain_policy
from seawall.outbox import Outbox
from seawall.testing._upstream import Fault, FaultyUpstream


def test_the_app_enqueues_in_its_transaction_and_the_dispatcher_sends(
    db_url: str, upstream: FaultyUpstream
) -> None:
    upstream.route("/v1/charges", Fault.ok())
    registry = seawall.Registry()
    registry.add("payments", base_url=upstream.url, policy=plain_policy())
    engine = make_engine(db_url)
    outbox = Outbox(registry, engine, table=f"outbox_{uuid.uuid4().hex[:8]}")
    orders = sa.Table(
        f"orders_{uuid.uuid4().hex[:8]}",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("amount", sa.Integer),
    )

    @asynccontextmanager
    async def schema(app: FastAPI) -> AsyncIterator[None]:
        await outbox.create_schema()
        async with engine.begin() as conn:
            await conn.run_sync(orders.metadata.create_all)
        yield
        await engine.dispose()  # the dispatcher has stopped by now

    app = FastAPI(lifespan=schema)

    @app.post("/pay")
    async def pay(amount: int) -> dict[str, object]:
        async with AsyncSession(engine) as session, session.begin():
            order_id = (
                await session.execute(orders.insert().values(amount=amount).returning(orders.c.id))
            ).scalar_one()
            ref = await outbox.enqueue(
                session, "payments", "POST", "/v1/charges", json={"order": order_id}
            )
        return {"order": order_id, "entry": ref.id}

    seawall.fastapi.install(app, registry, outbox=outbox)
    with TestClient(app) as client:
        answer = client.post("/pay", params={"amount": 5})
        assert answer.status_code == 200
        deadline = time.monotonic() + 20
        while upstream.count("/v1/charges") < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    [request] = upstream.requests()
    assert request.body == b'{"order":' + str(answer.json()["order"]).encode() + b"}"
