"""The shop example's behaviour, on FastAPI and on Litestar, against real loopback upstreams."""

from __future__ import annotations

import json
import time
from typing import Any, cast

import httpx
import pytest
from example_shop_harness import OpenShop, Shop, merge
from examples.fastapi_app import shop as shop_logic

import seawall
from seawall.testing import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

ITEMS = [{"sku": "tea", "price_cents": 450}, {"sku": "mug", "price_cents": 1200}]


def order(order_id: str, **extra: Any) -> dict[str, Any]:
    return {"order_id": order_id, "amount_cents": 1999, "currency": "EUR", **extra}


def charged(status: str = "succeeded") -> Fault:
    """The provider's status check finding the charge."""
    return Fault(body=json.dumps({"status": status}).encode())


# -- payments ----------------------------------------------------------------------


async def test_pay_charges_once_with_the_order_id_as_idempotency_key(shop: Shop) -> None:
    response = await shop.client.post("/pay", json=order("o-1", email="a@example.com"))

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "paid"
    assert body["verified"] is False
    assert body["notified"] is True
    [charge] = shop.payments.requests("/charges")
    assert charge.method == "POST"
    assert charge.idempotency_key == "o-1"
    assert json.loads(charge.body) == {"order_id": "o-1", "amount": 1999, "currency": "EUR"}
    [note] = shop.notifications.requests("/notifications")
    assert json.loads(note.body) == {
        "event": "order_paid",
        "order_id": "o-1",
        "email": "a@example.com",
    }
    assert (await shop.client.get("/orders/o-1")).json()["status"] == "paid"


async def test_pay_retries_a_503_with_the_same_idempotency_key(shop: Shop) -> None:
    shop.payments.route("/charges", Fault.error(503), Fault.ok())

    response = await shop.client.post("/pay", json=order("o-2"))

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "paid"
    attempts = shop.payments.requests("/charges")
    assert len(attempts) == 2
    assert [a.idempotency_key for a in attempts] == ["o-2", "o-2"]
    assert attempts[0].body == attempts[1].body


async def test_pay_declined_by_the_provider_is_not_retried(shop: Shop) -> None:
    shop.payments.route("/charges", Fault.error(402))

    response = await shop.client.post("/pay", json=order("o-declined"))

    assert response.status_code == 402
    assert response.json()["status"] == "declined"
    assert shop.payments.count("/charges") == 1


async def test_hung_charge_is_verified_then_committed(shop: Shop) -> None:
    shop.payments.route("/charges", Fault.hang())
    shop.payments.route("/charges/o-3", charged())

    started = time.monotonic()
    response = await shop.client.post("/pay", json=order("o-3"))
    elapsed = time.monotonic() - started

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "paid"
    assert body["verified"] is True
    # Every attempt went out with the same key; then the status check.
    assert {r.idempotency_key for r in shop.payments.requests("/charges")} == {"o-3"}
    assert shop.payments.count("/charges") >= 2
    assert shop.payments.count("/charges/o-3") == 1
    assert elapsed < 2.0  # payments' total timeout is 0.6 s in these tests
    assert (await shop.client.get("/orders/o-3")).json()["status"] == "paid"


async def test_hung_charge_that_never_arrived_asks_the_client_to_retry(shop: Shop) -> None:
    shop.payments.route("/charges", Fault.hang())
    shop.payments.route("/charges/o-4", Fault.error(404))

    response = await shop.client.post("/pay", json=order("o-4"))

    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.json()["status"] == "not_charged"
    assert (await shop.client.get("/orders/o-4")).status_code == 404
    assert shop.notifications.count() == 0


async def test_unverifiable_charge_is_parked_and_verified_later(shop: Shop) -> None:
    shop.payments.route("/charges", Fault.hang())
    shop.payments.route("/charges/o-5", Fault.error(500))  # the status check fails too

    response = await shop.client.post("/pay", json=order("o-5"))

    assert response.status_code == 202, response.text
    assert response.headers["location"] == "/orders/o-5"
    assert response.json() == {"order_id": "o-5", "status": "pending_verification"}
    assert shop.notifications.count() == 0

    # Later the provider answers: the order is committed then, and only then.
    shop.payments.route("/charges/o-5", charged())
    later = await shop.client.get("/orders/o-5")
    assert later.status_code == 200
    assert later.json()["status"] == "paid"
    assert later.json()["verified"] is True
    assert shop.notifications.count("/notifications") == 1


async def test_outcome_unknown_error_goes_to_the_status_check() -> None:
    """A charge without retries ends in OutcomeUnknownError: the same verification path."""

    class Payments:
        def __init__(self) -> None:
            self.checked: list[str] = []

        async def post(self, url: str, **kwargs: Any) -> Any:
            raise seawall.OutcomeUnknownError("sent, no answer", dependency="payments")

        async def get(self, url: str, **kwargs: Any) -> Any:
            self.checked.append(url)
            return httpx.Response(200, json={"status": "succeeded"})

    class Notifications:
        async def post(self, url: str, **kwargs: Any) -> Any:
            return httpx.Response(202)

    orders = shop_logic.OrderBook()
    payments = Payments()
    answer = await shop_logic.pay(
        shop_logic.Order("o-6", 100),
        payments=cast(seawall.ResilientClient, payments),
        notifications=cast(seawall.ResilientClient, Notifications()),
        orders=orders,
    )

    assert answer.status == 200
    assert answer.body["status"] == "paid"
    assert answer.body["verified"] is True
    assert payments.checked == ["/charges/o-6"]


async def test_open_breaker_fails_pay_fast_with_a_problem(shop: Shop) -> None:
    shop.registry.breaker("payments").force_open()

    response = await shop.client.post("/pay", json=order("o-7"))

    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) >= 1
    problem = response.json()
    assert problem["reason"] == "circuit_open"
    assert problem["dependency"] == "payments"
    assert shop.payments.count() == 0  # nothing was sent: nothing to verify
    assert shop.payments.url not in response.text


async def test_invalid_order_id_is_refused_before_any_call(shop: Shop) -> None:
    response = await shop.client.post("/pay", json=order("../admin"))

    assert response.status_code in (400, 422)
    assert shop.payments.count() == 0


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


# -- notifications ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [Fault.error(500), Fault.hang(), Fault.reset_connection(), Fault.garbage()],
    ids=["500", "hang", "reset", "garbage"],
)
async def test_notification_failure_never_fails_the_order(shop: Shop, fault: Fault) -> None:
    shop.notifications.route("/notifications", fault)

    started = time.monotonic()
    response = await shop.client.post("/pay", json=order("o-8"))
    elapsed = time.monotonic() - started

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "paid"
    assert response.json()["notified"] is False
    assert shop.notifications.count("/notifications") == 1  # best effort: no retry
    assert elapsed < 1.5  # notifications' total timeout is 0.2 s in these tests


async def test_unreachable_notifications_never_fail_the_order(
    open_shop: OpenShop, settings: dict[str, Any]
) -> None:
    refused = f"http://127.0.0.1:{FaultyUpstream.refused_port()}"
    config = merge(settings, {"dependencies": {"notifications": {"base_url": refused}}})
    async with open_shop(config) as running:
        response = await running.client.post("/pay", json=order("o-9"))

    assert response.status_code == 200
    assert response.json()["notified"] is False


# -- the status app --------------------------------------------------------------------


async def test_status_app_is_mounted(shop: Shop) -> None:
    response = await shop.client.get("/_resilience/")

    assert response.status_code == 200
    dependencies = response.json()["dependencies"]
    assert set(dependencies) == {"payments", "catalog", "notifications"}
    assert dependencies["payments"]["bulkhead"]["limit"] == 20
    assert dependencies["payments"]["breaker"]["state"] == "closed"
    assert dependencies["notifications"]["bulkhead"] is None
