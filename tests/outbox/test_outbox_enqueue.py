"""Enqueue: one INSERT in the user's transaction; repeats, reused keys, what is never stored."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

import seawall
from conftest import T0, enqueue, row, rows, session
from seawall.outbox import IdempotencyKeyReusedError, Outbox, State
from seawall.testing import ManualClock
from seawall.testing._upstream import FaultyUpstream

pytestmark = pytest.mark.anyio


async def test_commit_sends_once(outbox: Outbox, upstream: FaultyUpstream) -> None:
    ref = await enqueue(outbox, json={"amount": 250})
    assert ref.created
    report = await outbox.dispatcher().drain()
    assert report.outcomes == {"succeeded": 1}
    [req] = upstream.requests()
    assert (req.method, req.path, req.idempotency_key) == (
        "POST",
        "/v1/charges",
        ref.idempotency_key,
    )
    assert json.loads(req.body) == {"amount": 250}
    assert req.header("content-type") == "application/json"
    assert (await row(outbox, ref.id))["state"] == State.SUCCEEDED
    # Nothing is sent twice.
    assert not (await outbox.dispatcher().drain()).busy
    assert upstream.count() == 1


async def test_rollback_sends_nothing(outbox: Outbox, upstream: FaultyUpstream) -> None:
    async with session(outbox.engine) as s, s.begin():
        await outbox.enqueue(s, "payments", "POST", "/v1/charges", json={"amount": 1})
        await s.rollback()

    async def fails() -> None:
        async with session(outbox.engine) as s, s.begin():
            await outbox.enqueue(s, "payments", "POST", "/v1/charges", json={"amount": 2})
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fails()
    assert not (await outbox.dispatcher().drain()).busy
    assert await rows(outbox) == []
    assert upstream.count() == 0


async def test_cancel_sends_nothing(outbox: Outbox, upstream: FaultyUpstream) -> None:
    ref = await enqueue(outbox)
    async with session(outbox.engine) as s, s.begin():
        assert await outbox.cancel(s, ref.id)
    async with session(outbox.engine) as s, s.begin():
        assert not await outbox.cancel(s, ref.id)  # not pending any more
    assert not (await outbox.dispatcher().drain()).busy
    assert upstream.count() == 0
    assert (await row(outbox, ref.id))["state"] == State.CANCELLED


async def test_same_key_again_returns_the_entry_and_the_transaction_stays_usable(
    outbox: Outbox, upstream: FaultyUpstream
) -> None:
    first = await enqueue(outbox, idempotency_key="order-1", json={"amount": 5})
    async with session(outbox.engine) as s, s.begin():
        again = await outbox.enqueue(
            s, "payments", "POST", "/v1/charges", json={"amount": 5}, idempotency_key="order-1"
        )
        other = await outbox.enqueue(s, "payments", "POST", "/v1/charges", json={"amount": 6})
    assert (again.id, again.created) == (first.id, False)
    assert other.created
    assert len(await rows(outbox)) == 2
    await outbox.dispatcher().drain()
    assert upstream.count(idempotency_key="order-1") == 1


async def test_same_key_other_payload_raises_and_the_transaction_stays_usable(
    outbox: Outbox,
) -> None:
    first = await enqueue(outbox, idempotency_key="order-2", json={"amount": 5})
    async with session(outbox.engine) as s, s.begin():
        with pytest.raises(IdempotencyKeyReusedError, match="order-2") as caught:
            await outbox.enqueue(
                s, "payments", "POST", "/v1/charges", json={"amount": 7}, idempotency_key="order-2"
            )
        assert caught.value.existing_id == first.id
        # On PostgreSQL a unique violation would have aborted the transaction.
        later = await outbox.enqueue(s, "payments", "POST", "/v1/refunds", json={"amount": 1})
    assert later.created
    assert [r["path"] for r in await rows(outbox)] == ["/v1/charges", "/v1/refunds"]


async def test_the_same_key_under_two_dependencies_is_two_entries(outbox: Outbox) -> None:
    a = await enqueue(outbox, "payments", idempotency_key="k")
    b = await enqueue(outbox, "ledger", path="/entries", idempotency_key="k")
    assert a.created
    assert b.created
    assert a.id != b.id


async def test_enqueue_is_one_insert_and_nothing_else(outbox: Outbox) -> None:
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split()[0].upper())

    async with session(outbox.engine) as s, s.begin():
        await s.execute(sa.text("SELECT 1"))  # the user's own work
        event.listen(outbox.engine.sync_engine, "before_cursor_execute", seen)
        try:
            await outbox.enqueue(s, "payments", "POST", "/v1/charges", json={"a": 1})
        finally:
            event.remove(outbox.engine.sync_engine, "before_cursor_execute", seen)
    assert statements == ["INSERT"]


@pytest.mark.parametrize(
    ("headers", "name"),
    [
        pytest.param({"Authorization": "Bearer sk_live_1"}, "Authorization", id="authorization"),
        pytest.param({"proxy-authorization": "Basic eA=="}, "proxy-authorization", id="proxy"),
        pytest.param({"Cookie": "session=abc"}, "Cookie", id="cookie"),
        pytest.param({"X-Api-Key": "k"}, "X-Api-Key", id="sensitive_headers"),
    ],
)
async def test_credentials_are_refused_naming_the_header(
    registry: seawall.Registry,
    engine: Any,
    clock: ManualClock,
    headers: dict[str, str],
    name: str,
) -> None:
    outbox = Outbox(registry, engine, clock=clock, sensitive_headers=["x-api-key"])
    await outbox.create_schema()
    async with session(engine) as s, s.begin():
        with pytest.raises(ValueError, match=f"{name!r} is never stored"):
            await outbox.enqueue(s, "payments", "POST", "/v1/charges", headers=headers)


async def test_no_row_holds_a_credential(
    upstream: FaultyUpstream, engine: Any, clock: ManualClock
) -> None:
    registry = seawall.Registry(clock=clock)
    registry.add(
        "payments",
        base_url=upstream.url,
        policy=seawall.Policy(retry=None, breaker=None),
        headers={"Authorization": "Bearer sk_live_s3cret"},
    )
    outbox = Outbox(registry, engine, clock=clock)
    await outbox.create_schema()
    ref = await enqueue(outbox, headers={"X-Request-Source": "shop"})
    await outbox.dispatcher().drain()
    [req] = upstream.requests()
    assert req.header("authorization") == "Bearer sk_live_s3cret"  # added at send time
    assert req.header("x-request-source") == "shop"
    stored = json.dumps(await rows(outbox), default=repr)
    assert "s3cret" not in stored
    assert ref.idempotency_key in stored
    await registry.aclose()


async def test_the_key_header_is_refused(outbox: Outbox) -> None:
    async with session(outbox.engine) as s, s.begin():
        with pytest.raises(ValueError, match="pass idempotency_key= instead"):
            await outbox.enqueue(s, "payments", "POST", "/x", headers={"Idempotency-Key": "a"})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"dependency": "nope"}, "unknown dependency 'nope'", id="dependency"),
        pytest.param({"method": "PO ST"}, r"method\): must be an HTTP method", id="method"),
        pytest.param({"path": "v1/charges"}, r"path\): must start with '/'", id="relative"),
        pytest.param(
            {"path": "https://evil.example/v1"}, "not under the base URL", id="foreign-url"
        ),
        pytest.param({"idempotency_key": 'a"b'}, r"idempotency_key\): must be 1 to 255", id="key"),
        pytest.param(
            {"idempotency_key": ""}, r"idempotency_key\): must be 1 to 255", id="empty-key"
        ),
        pytest.param(
            {"ordering_key": "x" * 256}, r"ordering_key\): must be 1 to 255", id="ordering"
        ),
        pytest.param({"json": {"n": float("nan")}}, r"json\): must be JSON data", id="nan"),
        pytest.param({"content": 5}, r"content\): must be bytes or str", id="content"),
        pytest.param(
            {"metadata": {"d": object()}}, r"metadata\): must be JSON data", id="metadata"
        ),
        pytest.param(
            {"not_before": datetime(2030, 1, 1)},
            r"not_before\): must be an aware datetime",
            id="naive",
        ),
        pytest.param({"json": {}, "content": b"x"}, "json= or content=, not both", id="both"),
    ],
)
async def test_bad_arguments_name_the_argument_and_value(
    outbox: Outbox, kwargs: dict[str, Any], match: str
) -> None:
    kwargs = dict(kwargs)  # shared by both backends' runs
    args = {"dependency": "payments", "method": "POST", "path": "/v1/charges"}
    for k in list(args):
        if k in kwargs:
            args[k] = kwargs.pop(k)
    async with session(outbox.engine) as s, s.begin():
        with pytest.raises((ValueError, TypeError, LookupError), match=match):
            await outbox.enqueue(s, args["dependency"], args["method"], args["path"], **kwargs)


async def test_bodies_over_max_body_are_refused(
    registry: seawall.Registry, engine: Any, clock: ManualClock
) -> None:
    outbox = Outbox(registry, engine, clock=clock, max_body=1000)
    await outbox.create_schema()
    async with session(engine) as s, s.begin():
        await outbox.enqueue(s, "payments", "POST", "/x", content=b"x" * 1000)
        with pytest.raises(ValueError, match="1001 bytes, over the outbox's max_body"):
            await outbox.enqueue(s, "payments", "POST", "/x", content=b"x" * 1001)


async def test_an_absolute_url_under_the_base_url_is_stored_relative(
    outbox: Outbox, upstream: FaultyUpstream
) -> None:
    ref = await enqueue(outbox, "ledger", path=upstream.url + "/ledger/entries?x=1")
    assert (await row(outbox, ref.id))["path"] == "/entries?x=1"
    await outbox.dispatcher().drain()
    assert [r.target for r in upstream.requests()] == ["/ledger/entries?x=1"]


async def test_not_before_holds_the_entry(
    outbox: Outbox, upstream: FaultyUpstream, clock: ManualClock
) -> None:
    await enqueue(outbox, not_before=timedelta(seconds=60))
    await enqueue(outbox, not_before=datetime.fromtimestamp(T0 + 120, UTC))
    d = outbox.dispatcher()
    assert not (await d.drain()).busy
    clock.advance(60)
    assert (await d.drain()).outcomes == {"succeeded": 1}
    clock.advance(60)
    assert (await d.drain()).outcomes == {"succeeded": 1}
    assert upstream.count() == 2


async def test_metadata_and_content_are_stored(outbox: Outbox, upstream: FaultyUpstream) -> None:
    seen: list[Any] = []

    @outbox.on_success("payments")
    async def done(entry: Any, response: Any, s: Any) -> None:
        seen.append((entry.metadata, entry.body, response.status_code))

    await enqueue(outbox, json=None, content="plain text", metadata={"order": 7})
    await outbox.dispatcher().drain()
    assert seen == [({"order": 7}, b"plain text", 200)]


async def test_sf_string_key_style_quotes_the_key(outbox: Outbox, upstream: FaultyUpstream) -> None:
    outbox.route("payments", key_style="sf-string")
    ref = await enqueue(outbox, idempotency_key="abc-1")
    await outbox.dispatcher().drain()
    [req] = upstream.requests()
    assert req.header("idempotency-key") == '"abc-1"'
    assert (await row(outbox, ref.id))["state"] == State.SUCCEEDED


async def test_a_dependency_that_ignores_keys_gets_none(
    outbox: Outbox, upstream: FaultyUpstream
) -> None:
    outbox.route("payments", honours_idempotency_key=False)
    await enqueue(outbox)
    await outbox.dispatcher().drain()
    [req] = upstream.requests()
    assert req.header("idempotency-key") is None


async def test_a_commit_wakes_a_dispatcher_in_this_process(outbox: Outbox) -> None:
    woken: list[int] = []
    outbox._wakers.append(lambda: woken.append(1))
    async with session(outbox.engine) as s, s.begin():
        await outbox.enqueue(s, "payments", "POST", "/x")
        assert woken == []  # not before the commit
    assert woken == [1]
    async with session(outbox.engine) as s, s.begin():
        await outbox.enqueue(s, "payments", "POST", "/x")
        await s.rollback()
    async with session(outbox.engine) as s, s.begin():
        await s.execute(sa.text("SELECT 1"))
    assert woken == [1]  # neither a rollback nor an unrelated commit wakes it


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_bad_outbox_and_dispatcher_settings_name_the_field(
    registry: seawall.Registry, engine: Any
) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    with pytest.raises(TypeError, match=r"Outbox\(engine\): must be a SQLAlchemy AsyncEngine"):
        Outbox(registry, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Outbox\(registry\): must be a seawall.Registry"):
        Outbox(object(), engine)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"Outbox\(max_body\): must be a number of bytes >= 0, got -1"
    ):
        Outbox(registry, engine, max_body=-1)
    with pytest.raises(ValueError, match=r"Outbox\(sensitive_headers\)"):
        Outbox(registry, engine, sensitive_headers=[""])
    with pytest.raises(ValueError, match=r"outbox_table\(name\): must be letters"):
        Outbox(registry, engine, table="drop table;")
    from seawall.outbox import OutboxError

    mysql = create_async_engine("mysql+aiomysql://u@localhost/db") if _has("aiomysql") else None
    if mysql is not None:
        with pytest.raises(OutboxError, match="supports PostgreSQL and SQLite, got 'mysql'"):
            Outbox(registry, mysql)
    outbox = Outbox(registry, engine)
    for kwargs, match in [
        ({"concurrency": 0}, r"dispatcher\(concurrency\): must be an integer in 1..10000, got 0"),
        ({"batch_size": 1.5}, r"dispatcher\(batch_size\): must be an integer"),
        ({"poll_interval": 0}, r"dispatcher\(poll_interval\): must be seconds"),
        ({"flush_interval": -1}, r"dispatcher\(flush_interval\): must be seconds"),
    ]:
        with pytest.raises(ValueError, match=match):
            outbox.dispatcher(**kwargs)
    with pytest.raises(TypeError, match="unknown setting 'send_timeout'"):
        outbox.route("payments", send_timeout=5)
    with pytest.raises(
        seawall.ConfigError, match=r"OutboxRoute\.max_attempts: must be >= 1, got 0"
    ):
        outbox.route("payments", max_attempts=0)
    with pytest.raises(LookupError, match="unknown dependency 'nope'"):
        outbox.route("nope")
    with pytest.raises(ValueError, match=r"outbox.verifier\(dependency\)"):
        outbox.verifier("")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


async def test_enqueue_on_a_connection_returns_the_id_and_finds_a_repeat(outbox: Outbox) -> None:
    """An AsyncConnection in a transaction serves as well as a session (SQLite learns the
    id from lastrowid, PostgreSQL from RETURNING)."""
    async with outbox.engine.begin() as conn:
        await conn.execute(sa.text("SELECT 1"))  # the user's own work
        first = await outbox.enqueue(conn, "payments", "POST", "/v1/charges", idempotency_key="c")
        other = await outbox.enqueue(conn, "payments", "POST", "/v1/charges")
        again = await outbox.enqueue(conn, "payments", "POST", "/v1/charges", idempotency_key="c")
    assert (first.created, other.created, again.created) == (True, True, False)
    assert again.id == first.id != other.id
    assert [(r["id"], r["idempotency_key"]) for r in await rows(outbox)] == [
        (first.id, "c"),
        (other.id, other.idempotency_key),
    ]
