"""The shop's logic, with no web framework in it: both example apps call these.

Three dependencies, three ways of living with their failures:

* payments: a charge carries the order id as its Idempotency-Key, so seawall
  may retry it; when no answer comes back at all the shop asks the provider
  what happened before it commits anything (:func:`verify_then_commit`);
* catalog: a read, answered from the last good response when the catalog
  fails (``fallback.stale_if_error``), and the answer says so;
* notifications: best effort; a failure is logged and swallowed.

Each function returns an :class:`Answer` (status, JSON body, headers) that the
app turns into its framework's response. Seawall's rejections (circuit open,
bulkhead full) and timeouts are not caught here: they reach the app, whose
seawall integration answers them with 503/504 problem responses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import httpx
import structlog

import seawall
import seawall.asgi

__all__ = [
    "CALL_ERRORS",
    "ORDER_ID_PATTERN",
    "Answer",
    "Order",
    "OrderBook",
    "check_charge",
    "list_catalog",
    "may_have_reached",
    "notify",
    "order_status",
    "pay",
    "transport_error_problem",
    "verify_then_commit",
]

log = structlog.get_logger("shop")

#: What an order id looks like; it becomes part of a URL path and a header.
ORDER_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

#: Errors a charge can end in. seawall's rejections (circuit open, bulkhead full)
#: come before anything is sent, unless an earlier attempt of the same call went
#: out: see :func:`may_have_reached`.
CALL_ERRORS = (seawall.SeawallError, TimeoutError, httpx.TransportError)


@dataclass(frozen=True, slots=True)
class Answer:
    """What to answer the shop's client: a status, a JSON body and headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class Order:
    order_id: str
    amount_cents: int
    currency: str = "EUR"
    email: str | None = None


class OrderBook:
    """The shop's own record of orders (in memory: it is an example).

    An order is committed here only once the shop knows whether it was paid.
    """

    def __init__(self) -> None:
        self._orders: dict[str, dict[str, Any]] = {}
        self._pending: dict[str, Order] = {}

    def get(self, order_id: str) -> dict[str, Any] | None:
        return self._orders.get(order_id)

    def pending(self, order_id: str) -> Order | None:
        return self._pending.get(order_id)

    def commit(self, order: Order, status: str, **details: Any) -> dict[str, Any]:
        record = {"order_id": order.order_id, "status": status, **details}
        self._orders[order.order_id] = record
        self._pending.pop(order.order_id, None)
        return record

    def hold(self, order: Order) -> dict[str, Any]:
        """Park an order whose payment could not be verified yet."""
        record = {"order_id": order.order_id, "status": "pending_verification"}
        self._orders[order.order_id] = record
        self._pending[order.order_id] = order
        return record

    def forget(self, order_id: str) -> None:
        self._orders.pop(order_id, None)
        self._pending.pop(order_id, None)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


# -- payments ----------------------------------------------------------------------


async def pay(
    order: Order,
    *,
    payments: seawall.ResilientClient,
    notifications: seawall.ResilientClient,
    orders: OrderBook,
) -> Answer:
    """Charge *order*; verify with the provider when the charge got no answer."""
    try:
        response = await payments.post(
            "/charges",
            json={
                "order_id": order.order_id,
                "amount": order.amount_cents,
                "currency": order.currency,
            },
            idempotency_key=order.order_id,  # the provider charges a key once
        )
    except CALL_ERRORS as exc:
        if not may_have_reached(exc):
            raise  # refused before anything was sent: seawall answers 503
        log.warning("charge_unanswered", order_id=order.order_id, error=type(exc).__name__)
        return await verify_then_commit(
            order, payments=payments, notifications=notifications, orders=orders
        )
    if response.is_success:
        return await _paid(
            order, _json(response), verified=False, notifications=notifications, orders=orders
        )
    if response.is_client_error:
        orders.commit(order, "declined")
        return Answer(402, {"order_id": order.order_id, "status": "declined"})
    # The provider answered, with an error: nothing was charged.
    return Answer(
        502,
        {
            "order_id": order.order_id,
            "status": "failed",
            "detail": f"the payment provider answered {response.status_code}",
        },
    )


def may_have_reached(exc: BaseException) -> bool:
    """Whether a failed call may have reached the upstream, and acted there.

    OutcomeUnknownError says so outright: a POST or PATCH was sent and got no
    answer (with an Idempotency-Key, after seawall's retries got none either).
    Other errors carry the call's report, which counts the attempts that went
    out: a call refused before its first attempt (``attempts == 0``) never left.
    """
    if isinstance(exc, seawall.OutcomeUnknownError):
        return True
    report = seawall.report_of(exc)
    return report is None or report.attempts > 0


async def verify_then_commit(
    order: Order,
    *,
    payments: seawall.ResilientClient,
    notifications: seawall.ResilientClient,
    orders: OrderBook,
) -> Answer:
    """The charge may or may not have happened: ask the provider, then commit."""
    verdict = await check_charge(payments, order.order_id)
    if verdict == "charged":
        return await _paid(order, None, verified=True, notifications=notifications, orders=orders)
    if verdict == "not_charged":
        # Nothing happened upstream: the client may simply try again.
        orders.forget(order.order_id)
        return Answer(
            503,
            {
                "order_id": order.order_id,
                "status": "not_charged",
                "detail": "the payment provider did not answer and has no such charge; retry",
            },
            {"Retry-After": "1"},
        )
    # Still unknown: park the order, never charge it twice, check again later.
    record = orders.hold(order)
    return Answer(202, record, {"Location": f"/orders/{order.order_id}"})


async def check_charge(
    payments: seawall.ResilientClient, order_id: str
) -> Literal["charged", "not_charged", "unknown"]:
    """Ask the provider whether the charge keyed *order_id* exists (``GET /charges/{id}``)."""
    try:
        response = await payments.get(f"/charges/{quote(order_id, safe='')}")
    except (seawall.SeawallError, httpx.HTTPError, TimeoutError) as exc:
        log.warning("charge_check_failed", order_id=order_id, error=type(exc).__name__)
        return "unknown"
    if response.status_code == 200:
        return "charged"
    if response.status_code == 404:
        return "not_charged"
    return "unknown"


async def order_status(
    order_id: str,
    *,
    payments: seawall.ResilientClient,
    notifications: seawall.ResilientClient,
    orders: OrderBook,
) -> Answer:
    """An order's state; a parked order is verified again first."""
    pending = orders.pending(order_id)
    if pending is not None:
        answer = await verify_then_commit(
            pending, payments=payments, notifications=notifications, orders=orders
        )
        if answer.status == 503:  # verified: never charged
            return Answer(200, orders.commit(pending, "not_charged"))
        return Answer(200, answer.body)
    record = orders.get(order_id)
    if record is None:
        return Answer(404, {"detail": "no such order"})
    return Answer(200, record)


async def _paid(
    order: Order,
    charge: Any,
    *,
    verified: bool,
    notifications: seawall.ResilientClient,
    orders: OrderBook,
) -> Answer:
    record = orders.commit(order, "paid", verified=verified, charge=charge)
    notified = await notify(notifications, "order_paid", order)
    return Answer(200, {**record, "notified": notified})


# -- notifications ------------------------------------------------------------------


async def notify(notifications: seawall.ResilientClient, event: str, order: Order) -> bool:
    """Best effort: True if the notification went out; a failure is logged, never raised."""
    try:
        response = await notifications.post(
            "/notifications",
            json={"event": event, "order_id": order.order_id, "email": order.email},
        )
    except (seawall.SeawallError, httpx.HTTPError, TimeoutError) as exc:
        report = seawall.report_of(exc)
        log.warning(
            "notification_failed",
            order_id=order.order_id,
            error=type(exc).__name__,
            outcome=report.outcome if report is not None else None,
        )
        return False
    if response.is_error:
        log.warning(
            "notification_failed", order_id=order.order_id, status_code=response.status_code
        )
        return False
    return True


# -- catalog --------------------------------------------------------------------------


async def list_catalog(catalog: seawall.ResilientClient) -> Answer:
    """The catalog's items; served from the last good answer when the catalog fails."""
    response = await catalog.get("/items")
    if response.is_error:  # no cached answer to fall back on
        return Answer(
            502, {"detail": f"the catalog answered {response.status_code}", "stale": False}
        )
    report = seawall.report_of(response)
    stale = report is not None and report.fallback == "cache"
    age = response.headers.get("age")
    return Answer(
        200,
        {
            "items": _json(response),
            "stale": stale,
            "age": int(age) if stale and age and age.isdigit() else None,
        },
    )


# -- errors that seawall does not answer itself ---------------------------------------


def transport_error_problem(exc: Exception) -> Answer:
    """The answer for an httpx transport error that escaped a handler.

    seawall's integration answers its own errors (503 circuit open, 504
    timeouts...) and lets every other error through; a connection refused by
    a dependency would be a bare 500. The shop answers it with a 502 problem
    in the same shape, naming the dependency and nothing else.
    """
    problem = seawall.asgi.problem_for(exc)  # timeouts: seawall's 504
    if problem is not None:
        status, headers, body = problem
        return Answer(
            status,
            json.loads(body),
            {k.decode(): v.decode() for k, v in headers if k == b"retry-after"},
            "application/problem+json",
        )
    report = seawall.report_of(exc)
    dependency = report.dependency if report is not None else None
    return Answer(
        502,
        {
            "type": "urn:shop:problem:unreachable",
            "title": "Dependency unreachable",
            "status": 502,
            "detail": f"A call to the {dependency} dependency failed: unreachable.",
            "dependency": dependency,
            "reason": "unreachable",
        },
        media_type="application/problem+json",
    )
