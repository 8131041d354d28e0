"""A fake payment provider on loopback, with a ledger of its own.

:class:`PaymentProvider` is a :class:`~seawall.testing.FaultyUpstream` that
also keeps charges: it is the provider to test an outbox verifier, a
compensator or a retry policy against, and the one the demo's shops charge.
Its ledger is the truth a test checks the shop's records against: which
orders were charged, how many times, which were refunded.

The API, a small Stripe-like one:

* ``POST /charges`` with ``{"order_id": str, "amount": int, ...}`` charges
  and answers ``201`` with the charge. With an ``Idempotency-Key`` header, a
  repeated key charges nothing and answers the first charge again (``200``;
  ``422`` if the key came with another order or amount). Without one, every
  POST charges.
* ``GET /charges/{order_id}``: the order's latest charge, with ``"count"``,
  how many charges the order has had (cancelled ones included); ``404`` if none.
* ``POST /charges/{order_id}/cancel``: cancels (refunds) every charge of the
  order and answers the latest; ``404`` if none. Idempotent.
* ``GET /items``: a small catalog.

A charge is ``{"id": "ch_000001", "order_id": ..., "amount": ..., "status":
"succeeded"}`` (``"cancelled"`` once refunded).

Faults are :class:`~seawall.testing.Fault` values, scripted per operation:
:meth:`PaymentProvider.fault` for charges, :meth:`~PaymentProvider.check_fault`
for status checks, :meth:`~PaymentProvider.cancel_fault` for cancels, and
``route()``/``set_default()`` for every other path. A fault with a status
under 400 (``ok``, ``latency``, ``hang``, ``reset_connection``, ...) lets the
operation happen **at receipt**: only the answer is delayed or lost, which
is what an unknown outcome is. A ``4xx``/``5xx`` fault (``error(500)``)
answers that error and changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from ._upstream import Fault, FaultyUpstream, RecordedRequest, _check_faults, _Script

__all__ = ["Charge", "PaymentProvider"]

_CHECK = re.compile(r"/charges/([^/]+)")
_CANCEL = re.compile(r"/charges/([^/]+)/cancel")
_JSON = {"Content-Type": "application/json"}
#: What ``GET /items`` answers.
CATALOG: dict[str, Any] = {
    "items": [
        {"sku": "tea", "name": "Green tea", "price": 450},
        {"sku": "cup", "name": "Tea cup", "price": 1200},
        {"sku": "pot", "name": "Teapot", "price": 3900},
    ]
}
_CATALOG_BODY = json.dumps(CATALOG).encode()


@dataclass(frozen=True, slots=True)
class Charge:
    """One charge in the provider's ledger."""

    id: str
    """``ch_`` and a sequence number, e.g. ``"ch_000001"``."""
    order_id: str
    """The order it charged, from the request's body."""
    amount: int
    """The amount charged, from the request's body."""
    idempotency_key: str | None
    """The request's ``Idempotency-Key`` (``None``: it had none)."""
    cancelled: bool = False
    """Cancelled (refunded) by ``POST /charges/{order_id}/cancel``."""

    def as_json(self) -> dict[str, Any]:
        """The charge as the API answers it."""
        return {
            "id": self.id,
            "order_id": self.order_id,
            "amount": self.amount,
            "status": "cancelled" if self.cancelled else "succeeded",
        }


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What an operation came to: the status and JSON body to answer."""

    status: int
    body: dict[str, Any]


class PaymentProvider(FaultyUpstream):
    """A fake payment provider on a loopback port, with its own ledger of charges.

    ::

        with PaymentProvider() as provider:
            provider.fault(Fault.hang())        # the next charges are made, never answered
            ...                                 # the code under test charges order "o-1"
            assert provider.charge_counts() == {"o-1": 1}

    Same lifecycle as :class:`FaultyUpstream` (``start()``/``stop()``, sync or
    async context manager, ``url``, ``port``) and the same request log
    (``requests()``, ``count()``). See the module's documentation for the API
    it serves and how faults combine with it.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        """Configure the server; nothing is bound until :meth:`start`."""
        super().__init__(host=host, port=port)
        self._charges: list[Charge] = []
        #: Idempotency-Key -> the index of the charge it made.
        self._keys: dict[str, int] = {}
        #: order_id -> the indexes of its charges, in order.
        self._orders: dict[str, list[int]] = {}
        self._charge_script = _Script(())
        self._check_script = _Script(())
        self._cancel_script = _Script(())

    def __repr__(self) -> str:
        where = self.url if self._address is not None else "unstarted"
        running = "running" if self._thread is not None else "stopped"
        return f"<PaymentProvider {where} {running} charges={len(self.charges())}>"

    # -- scripting -----------------------------------------------------------

    def fault(self, *faults: Fault) -> None:
        """Script ``POST /charges``: successive charges consume ``faults``, the last
        repeats; none means healthy. Replaces the script and starts it over."""
        _check_faults(faults)
        script = _Script(faults)
        with self._state:
            self._charge_script = script

    def check_fault(self, *faults: Fault) -> None:
        """Script the status checks, ``GET /charges/{order_id}`` (one script for all orders)."""
        _check_faults(faults)
        script = _Script(faults)
        with self._state:
            self._check_script = script

    def cancel_fault(self, *faults: Fault) -> None:
        """Script the cancels, ``POST /charges/{order_id}/cancel`` (one script for all orders)."""
        _check_faults(faults)
        script = _Script(faults)
        with self._state:
            self._cancel_script = script

    def reset(self) -> None:
        """Back to a fresh provider: no log, no charges, every script healthy."""
        super().reset()
        with self._state:
            self._charges.clear()
            self._keys.clear()
            self._orders.clear()
            self._charge_script = _Script(())
            self._check_script = _Script(())
            self._cancel_script = _Script(())

    # -- the ledger ------------------------------------------------------------

    def charges(self) -> list[Charge]:
        """Every charge made, in order, cancelled ones included."""
        with self._state:
            return list(self._charges)

    def charge_counts(self) -> dict[str, int]:
        """Live (not cancelled) charges per order; orders with none are left out."""
        counts: dict[str, int] = {}
        for charge in self.charges():
            if not charge.cancelled:
                counts[charge.order_id] = counts.get(charge.order_id, 0) + 1
        return counts

    # -- serving ---------------------------------------------------------------

    def _script_for(self, method: str, path: str) -> _Script:
        if method == "POST" and path == "/charges":
            return self._charge_script
        if method == "GET" and _CHECK.fullmatch(path):
            return self._check_script
        if method == "POST" and _CANCEL.fullmatch(path):
            return self._cancel_script
        return super()._script_for(method, path)

    def _answer(self, request: RecordedRequest, fault: Fault, n: int) -> Fault:
        method, path = request.method, request.path
        if fault.status >= 400:
            # The provider failed before doing anything: nothing changes.
            if fault.body is not None:
                return fault
            return _with(fault, _Outcome(fault.status, {"error": _phrase(fault.status)}))
        outcome: _Outcome | None = None
        if method == "POST" and path == "/charges":
            outcome = self._charge(request)
        elif method == "GET" and (found := _CHECK.fullmatch(path)):
            outcome = self._check(unquote(found[1]))
        elif method == "POST" and (found := _CANCEL.fullmatch(path)):
            outcome = self._cancel(unquote(found[1]))
        elif method in ("GET", "HEAD") and path == "/items":
            if fault.status == 200 and fault.body is None:
                return dataclasses.replace(
                    fault, body=_CATALOG_BODY, headers={**fault.headers, **_JSON}
                )
            return fault
        if outcome is None:
            return fault
        if fault.status != 200 or fault.body is not None:
            return fault  # done, but the fault's own answer is sent
        return _with(fault, outcome)

    def _charge(self, request: RecordedRequest) -> _Outcome:
        try:
            data = json.loads(request.body)
        except ValueError:
            return _Outcome(400, {"error": "the body is not JSON"})
        order_id = data.get("order_id") if isinstance(data, dict) else None
        amount = data.get("amount") if isinstance(data, dict) else None
        if not isinstance(order_id, str) or not order_id:
            return _Outcome(400, {"error": "order_id: must be a non-empty string"})
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            return _Outcome(400, {"error": "amount: must be an integer >= 0"})
        key = request.idempotency_key
        with self._state:
            if key is not None and key in self._keys:
                first = self._charges[self._keys[key]]
                if (first.order_id, first.amount) != (order_id, amount):
                    return _Outcome(
                        422, {"error": "idempotency key reused with another order or amount"}
                    )
                return _Outcome(200, first.as_json())
            charge = Charge(
                id=f"ch_{len(self._charges) + 1:06d}",
                order_id=order_id,
                amount=amount,
                idempotency_key=key,
            )
            if key is not None:
                self._keys[key] = len(self._charges)
            self._orders.setdefault(order_id, []).append(len(self._charges))
            self._charges.append(charge)
        return _Outcome(201, charge.as_json())

    def _check(self, order_id: str) -> _Outcome:
        with self._state:
            found = self._orders.get(order_id)
            latest = self._charges[found[-1]] if found else None
            count = len(found) if found else 0
        if latest is None:
            return _Outcome(404, {"error": "no such charge"})
        return _Outcome(200, {**latest.as_json(), "count": count})

    def _cancel(self, order_id: str) -> _Outcome:
        with self._state:
            latest: Charge | None = None
            for i in self._orders.get(order_id, ()):
                latest = self._charges[i] = dataclasses.replace(self._charges[i], cancelled=True)
        if latest is None:
            return _Outcome(404, {"error": "no such charge"})
        return _Outcome(200, latest.as_json())


def _with(fault: Fault, outcome: _Outcome) -> Fault:
    """``fault`` (its delays and breakages kept) answering ``outcome``."""
    return dataclasses.replace(
        fault,
        status=outcome.status,
        body=json.dumps(outcome.body).encode(),
        headers={**fault.headers, **_JSON},
    )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"
