"""The shop example's behaviour, on FastAPI and on Litestar, against real loopback upstreams.

Payments go through the outbox: ``/pay`` only writes; the test drives the
dispatcher a cycle at a time (``shop.dispatch()``) on the outbox's
ManualClock, and looks at the provider's ledger.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from example_shop_harness import ROOT, OpenShop, Shop, merge
from examples.fastapi_app.shop import OrderRecord
from sqlalchemy.ext.asyncio import AsyncSession

from seawall.testing import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

ITEMS = [{"sku": "tea", "price_cents": 450}, {"sku": "mug", "price_cents": 1200}]
#: resilience.toml's verify_delay for payments and notifications.
PAYMENTS_VERIFY_DELAY = 10.0
NOTIFICATIONS_VERIFY_DELAY = 1.0


def order(order_id: str, **extra: Any) -> dict[str, Any]:
    return {"order_id": order_id, "amount_cents": 1999, "currency": "EUR", **extra}


def posts(shop: Shop, path: str = "/charges") -> list[Any]:
    return [r for r in shop.payments.requests(path) if r.method == "POST"]


async def accepted(shop: Shop, order_id: str, **extra: Any) -> None:
    response = await shop.client.post("/pay", json=order(order_id, **extra))
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/orders/{order_id}"
    assert response.json()["status"] == "accepted"


# -- payments ----------------------------------------------------------------------


async def test_pay_accepts_at_once_and_the_dispatcher_charges_once(shop: Shop) -> None:
    response = await shop.client.post("/pay", json=order("o-1", email="a@example.com"))

    assert response.status_code == 202, response.text
    assert response.headers["location"] == "/orders/o-1"
    assert response.json()["status"] == "accepted"
    # Only written: nothing has gone to the provider yet.
    assert shop.payments.count() == 0
    before = await shop.order("o-1")
    assert before["status"] == "accepted"
    assert before["payment"]["state"] == "pending"

    await shop.drain()

    [charge] = shop.payments.charges()
    assert charge.order_id == "o-1"
    assert charge.amount == 1999
    assert charge.idempotency_key == "o-1"
    [request] = posts(shop)
    assert json.loads(request.body) == {"order_id": "o-1", "amount": 1999, "currency": "EUR"}
    after = await shop.order("o-1")
    assert after["status"] == "paid"
    assert after["charge_id"] == charge.id
    assert after["payment"]["state"] == "succeeded"
    # The notification was enqueued with the payment's result, then sent.
    assert after["notification"]["state"] == "succeeded"
    [note] = shop.notifications.requests("/notifications")
    assert json.loads(note.body) == {
        "event": "order_paid",
        "order_id": "o-1",
        "email": "a@example.com",
    }


async def test_the_same_order_again_enqueues_nothing_and_another_is_refused(shop: Shop) -> None:
    await accepted(shop, "o-2")
    await accepted(shop, "o-2")  # a client retrying its POST
    conflict = await shop.client.post("/pay", json=order("o-2", amount_cents=5))

    assert conflict.status_code == 409
    await shop.drain()
    assert shop.payments.charge_counts() == {"o-2": 1}
    assert len(posts(shop)) == 1
    assert (await shop.order("o-2"))["amount_cents"] == 1999


async def test_a_503_is_retried_with_the_same_idempotency_key(shop: Shop) -> None:
    shop.payments.fault(Fault.error(503), Fault.ok())
    await accepted(shop, "o-3")

    await shop.dispatch()

    attempts = posts(shop)
    assert [a.idempotency_key for a in attempts] == ["o-3", "o-3"]
    assert attempts[0].body == attempts[1].body
    assert shop.payments.charge_counts() == {"o-3": 1}
    assert (await shop.order("o-3"))["status"] == "paid"


async def test_hung_payments_leave_the_charge_unknown_until_the_verifier_finds_it(
    shop: Shop,
) -> None:
    shop.payments.fault(Fault.hang())

    started = time.monotonic()
    await accepted(shop, "o-4")
    assert time.monotonic() - started < 1.0  # accepted without waiting for the provider

    report = await shop.dispatch()  # each attempt hangs; the provider charged at receipt

    assert report.outcomes == {"unknown": 1}
    unknown = await shop.order("o-4")
    assert unknown["status"] == "accepted"
    assert unknown["payment"]["state"] == "unknown"
    assert {a.idempotency_key for a in posts(shop)} == {"o-4"}

    assert not (await shop.dispatch()).busy  # verify_delay has not passed
    shop.clock.advance(PAYMENTS_VERIFY_DELAY)
    report = await shop.dispatch()

    assert report.verified == 1
    assert shop.payments.count("/charges/o-4") == 1  # the status check, GET
    paid = await shop.order("o-4")
    assert paid["status"] == "paid"
    assert paid["payment"]["state"] == "succeeded"
    assert paid["payment"]["last_status"] == 200
    [charge] = shop.payments.charges()
    assert paid["charge_id"] == charge.id
    # Verified, not resent: the hung attempts are the only charges sent.
    sent = len(posts(shop))
    await shop.drain()
    assert len(posts(shop)) == sent
    assert shop.payments.charge_counts() == {"o-4": 1}


async def test_a_charge_the_provider_does_not_know_is_resent_with_the_same_key(
    shop: Shop,
) -> None:
    shop.payments.fault(Fault.hang())
    shop.payments.check_fault(Fault.error(404))  # the status check does not see it (yet)
    await accepted(shop, "o-5")
    await shop.dispatch()
    hung = len(posts(shop))
    assert hung >= 1

    shop.payments.fault(Fault.ok())
    shop.clock.advance(PAYMENTS_VERIFY_DELAY)
    report = await shop.dispatch()  # 404: not applied -> resent at once, same key

    assert report.verified == 1
    assert report.outcomes.get("succeeded") == 1
    assert len(posts(shop)) == hung + 1
    assert {a.idempotency_key for a in posts(shop)} == {"o-5"}
    # The provider had charged the hung attempt: the resend charged nothing more.
    assert shop.payments.charge_counts() == {"o-5": 1}
    assert (await shop.order("o-5"))["status"] == "paid"


async def test_a_declined_charge_cancels_the_order_through_the_cancel_api(shop: Shop) -> None:
    shop.payments.fault(Fault.error(402))
    await accepted(shop, "o-6")

    await shop.dispatch()  # declined: failed, compensated in the same cycle

    cancelled = await shop.order("o-6")
    assert cancelled["status"] == "cancelled"
    assert cancelled["detail"] == "payment failed: http_402"
    assert cancelled["payment"]["state"] == "compensated"
    assert cancelled["cancellation"]["state"] == "pending"
    assert shop.payments.count("/charges/o-6/cancel") == 0  # enqueued, not yet sent

    await shop.drain()

    [cancel] = posts(shop, "/charges/o-6/cancel")
    assert cancel.idempotency_key == "cancel-o-6"
    assert shop.payments.charges() == []  # declined: nothing was charged
    after = await shop.order("o-6")
    assert after["status"] == "cancelled"
    assert after["cancellation"]["last_status"] == 404
    assert after["detail"] == "payment failed: http_402; nothing was charged"
    assert after["notification"] is None
    assert shop.notifications.count() == 0


async def test_a_charge_resolved_as_failed_by_hand_is_cancelled_at_the_provider(
    shop: Shop,
) -> None:
    shop.payments.fault(Fault.hang())
    shop.payments.check_fault(Fault.error(503))  # nothing can tell what happened
    await accepted(shop, "o-7")
    await shop.dispatch()
    entry = (await shop.order("o-7"))["payment"]["entry"]

    assert await shop.outbox.resolve(entry, "failed")  # what `seawall outbox resolve` does
    shop.payments.fault(Fault.ok())
    await shop.drain()

    [charge] = shop.payments.charges()  # the hung attempt had been charged ...
    assert charge.cancelled  # ... and the compensator's cancel reached the provider
    after = await shop.order("o-7")
    assert after["status"] == "cancelled"
    assert after["cancellation"]["state"] == "succeeded"
    assert "cancelled at the provider" in after["detail"]


async def test_the_dispatcher_in_the_apps_lifespan_charges_on_its_own(
    open_shop: OpenShop, settings: dict[str, Any]
) -> None:
    async with open_shop(settings, dispatch=True) as running:
        await accepted(running, "o-8")
        # The commit wakes the app's dispatcher: no cycle is driven here.
        deadline = time.monotonic() + 10.0
        while (await running.order("o-8"))["status"] != "paid":
            assert time.monotonic() < deadline, "the app's dispatcher did not charge o-8"
            await anyio.sleep(0.02)
    assert running.payments.charge_counts() == {"o-8": 1}


async def test_concurrent_and_repeated_orders_are_each_charged_once(
    open_shop: OpenShop, settings: dict[str, Any]
) -> None:
    """Every order posted twice at once, all of them together, the app's own
    dispatcher sending as they commit: every answer a 202, one charge an order."""
    orders = [f"c-{i}" for i in range(30)]
    async with open_shop(settings, dispatch=True) as running:
        answers: list[int] = []

        async def pay(order_id: str) -> None:
            response = await running.client.post("/pay", json=order(order_id))
            answers.append(response.status_code)

        async with anyio.create_task_group() as tg:
            for order_id in orders * 2:
                tg.start_soon(pay, order_id)

        assert answers == [202] * len(orders) * 2
        deadline = time.monotonic() + 20.0
        while len(running.payments.charge_counts()) < len(orders):
            assert time.monotonic() < deadline, running.payments.charge_counts()
            await anyio.sleep(0.02)
    assert running.payments.charge_counts() == dict.fromkeys(orders, 1)
    assert len(posts(running)) == len(orders)


async def test_invalid_order_id_is_refused_before_anything_is_written(shop: Shop) -> None:
    response = await shop.client.post("/pay", json=order("../admin"))

    assert response.status_code in (400, 422)
    assert (await shop.outbox.status())["dependencies"] == {}
    assert (await shop.client.get("/orders/nope")).status_code == 404


# -- seawall outbox reconcile, run by hand ----------------------------------------------


def cli(shop: Shop, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m seawall outbox ARGS`` from the repository root, against the shop's database."""
    module = (
        "examples.fastapi_app.app" if shop.framework == "fastapi" else "examples.litestar_app.app"
    )
    env = {
        **os.environ,
        **shop.upstreams.environ(),
        "DATABASE_URL": shop.database_url,
        "PYTHONPATH": str(ROOT),
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    command, *rest = args
    return subprocess.run(
        [sys.executable, "-m", "seawall", "outbox", command, f"{module}:outbox", *rest],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_reconcile_by_hand_settles_an_unknown_charge(shop: Shop) -> None:
    shop.payments.fault(Fault.hang())
    shop.payments.check_fault(Fault.error(503))
    await accepted(shop, "o-9")
    await shop.dispatch()
    shop.clock.advance(PAYMENTS_VERIFY_DELAY)
    await shop.dispatch()  # the status check fails too: still unknown
    assert (await shop.order("o-9"))["payment"]["state"] == "unknown"

    shop.payments.check_fault(Fault.ok())  # the status API is back
    result = cli(shop, "reconcile", "--older-than", "0s")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "checked: compensations 0, pending_past_max_age 0, unknown 1",
        "  unknown->succeeded: 1",
    ]
    # What the README shows for this very run.
    readme = (ROOT / "examples" / "fastapi_app" / "README.md").read_text()
    assert f"--older-than 0s\n{result.stdout}$ echo $?\n0\n" in readme
    assert (await shop.order("o-9"))["status"] == "paid"
    assert shop.payments.charge_counts() == {"o-9": 1}


async def test_reconcile_exits_3_when_a_charge_needs_a_person(shop: Shop) -> None:
    await accepted(shop, "o-10")
    async with AsyncSession(shop.outbox.engine) as session, session.begin():
        await session.execute(sa.delete(OrderRecord).where(OrderRecord.order_id == "o-10"))
    await shop.dispatch()  # charged, and on_success finds no order: flagged, never resent

    payments = (await shop.outbox.status())["dependencies"]["payments"]
    assert set(payments) == {"succeeded"}
    assert payments["succeeded"]["needs_attention"] == 1
    assert shop.payments.charge_counts() == {"o-10": 1}
    result = cli(shop, "reconcile")

    assert result.returncode == 3, result.stderr
    assert result.stdout.splitlines() == [
        "checked: compensations 0, pending_past_max_age 0, unknown 0",
        "  no changes",
        "needs a person: entry 1 (payments, succeeded): on_success raised LookupError: "
        "no order 'o-10' for this charge",
    ]


# -- notifications ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [Fault.hang(), Fault.reset_connection(), Fault.error(500)],
    ids=["hang", "reset", "500"],
)
async def test_a_failed_notification_never_fails_the_order(shop: Shop, fault: Fault) -> None:
    shop.notifications.route("/notifications", fault)
    await accepted(shop, "o-11")

    for _ in range(5):  # each notification attempt, then its verification
        await shop.drain()
        shop.clock.advance(60.0)
    await shop.drain()

    after = await shop.order("o-11")
    assert after["status"] == "paid"
    assert after["notification"]["state"] == "compensated"  # given up, logged
    sent = shop.notifications.count("/notifications")
    if fault.status == 500:
        assert sent == 3  # answered: retried up to max_attempts
    else:
        assert sent == 1  # may have gone out: never sent again (at most once)


# -- catalog -------------------------------------------------------------------------


async def test_catalog_is_served_stale_after_the_upstream_turns_500(shop: Shop) -> None:
    shop.catalog.route(
        "/items",
        Fault(body=json.dumps(ITEMS).encode(), headers={"content-type": "application/json"}),
    )
    fresh = await shop.client.get("/catalog")
    assert fresh.status_code == 200
    assert fresh.json() == {"items": ITEMS, "stale": False, "age": None}

    shop.catalog.route("/items", Fault.error(500))
    stale = await shop.client.get("/catalog")

    assert stale.status_code == 200
    body = stale.json()
    assert body["items"] == ITEMS
    assert body["stale"] is True
    assert isinstance(body["age"], int)
    # The failing call was retried (reads are safe) before the cache answered.
    assert shop.catalog.count("/items") == 1 + 3


async def test_catalog_without_a_cached_answer_reports_the_failure(shop: Shop) -> None:
    shop.catalog.route("/items", Fault.error(500))

    response = await shop.client.get("/catalog")

    assert response.status_code == 502
    assert response.json()["stale"] is False


async def test_unreachable_catalog_answers_a_502_problem(
    open_shop: OpenShop, settings: dict[str, Any]
) -> None:
    refused = f"http://127.0.0.1:{FaultyUpstream.refused_port()}"
    config = merge(settings, {"dependencies": {"catalog": {"base_url": refused}}})
    async with open_shop(config) as running:
        response = await running.client.get("/catalog")

    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["dependency"] == "catalog"
    assert refused not in response.text


async def test_hung_catalog_without_a_cached_answer_times_out_with_504(shop: Shop) -> None:
    shop.catalog.route("/items", Fault.hang())

    response = await shop.client.get("/catalog")

    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["dependency"] == "catalog"


# -- the status app --------------------------------------------------------------------


async def test_status_app_is_mounted_with_the_outbox_counts(shop: Shop) -> None:
    await accepted(shop, "o-12")
    await shop.dispatcher.count()

    response = await shop.client.get("/_resilience/")

    assert response.status_code == 200
    snapshot = response.json()
    dependencies = snapshot["dependencies"]
    assert set(dependencies) == {"payments", "catalog", "notifications"}
    assert dependencies["payments"]["bulkhead"]["limit"] == 20
    assert dependencies["payments"]["breaker"]["state"] == "closed"
    assert dependencies["notifications"]["bulkhead"] is None
    assert snapshot["outbox"]["dependencies"]["payments"]["pending"]["count"] == 1
