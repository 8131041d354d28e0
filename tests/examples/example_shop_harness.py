"""Helpers for the example apps' tests (the fixtures live in conftest.py).

Kept out of conftest.py so that test modules can import them by a name no
other conftest shares.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import seawall
from seawall.outbox import CycleReport, Dispatcher, Outbox
from seawall.testing import FaultyUpstream, ManualClock, PaymentProvider

# The examples live outside the package: make ``import examples...`` work
# whatever the working directory pytest was started from.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NO_WAIT = {"initial": 0.0, "maximum": 0.0}

#: What the tests change in the shipped configuration: same policies, shorter times.
TEST_OVERRIDES: dict[str, dict[str, Any]] = {
    "payments": {
        "timeouts": {"attempt": 0.25, "total": 0.6},
        "retry": {"backoff": NO_WAIT},
        # The ASGI tests make few calls each: a breaker that opens after four of
        # them would get in the way; the uvicorn test sets its own.
        "breaker": {"minimum_calls": 20},
        # Exact backoffs between sends (on the outbox's ManualClock).
        "outbox": {"backoff": {"initial": 1.0, "maximum": 60.0, "jitter": False}},
    },
    "catalog": {
        "timeouts": {"attempt": 0.25, "total": 0.6},
        "retry": {"backoff": NO_WAIT},
    },
    "notifications": {
        "timeouts": {"connect": 0.2, "attempt": 0.2, "total": 0.2},
        "outbox": {"backoff": {"initial": 1.0, "maximum": 60.0, "jitter": False}},
    },
}


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of *base* with *override* merged in, table by table."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@dataclass
class Upstreams:
    payments: PaymentProvider
    catalog: FaultyUpstream
    notifications: FaultyUpstream

    def all(self) -> tuple[FaultyUpstream, ...]:
        return (self.payments, self.catalog, self.notifications)

    def environ(self) -> dict[str, str]:
        return {
            "PAYMENTS_URL": self.payments.url,
            "CATALOG_URL": self.catalog.url,
            "NOTIFICATIONS_URL": self.notifications.url,
        }


@dataclass
class Shop:
    """A running shop app and everything a test looks at.

    Its outbox runs on :attr:`clock` (a ManualClock) and, unless the shop was
    opened with ``dispatch=True``, nothing dispatches in the background: the
    test drives :attr:`dispatcher` a cycle at a time.
    """

    framework: str
    client: httpx.AsyncClient
    registry: seawall.Registry
    upstreams: Upstreams
    outbox: Outbox
    clock: ManualClock
    database_url: str

    def __post_init__(self) -> None:
        self.dispatcher: Dispatcher = self.outbox.dispatcher()

    @property
    def payments(self) -> PaymentProvider:
        return self.upstreams.payments

    @property
    def catalog(self) -> FaultyUpstream:
        return self.upstreams.catalog

    @property
    def notifications(self) -> FaultyUpstream:
        return self.upstreams.notifications

    async def dispatch(self) -> CycleReport:
        """One dispatcher cycle: what is due now (verifications, compensations, sends)."""
        return await self.dispatcher.run_once()

    async def drain(self) -> CycleReport:
        """Dispatcher cycles until nothing is due now."""
        return await self.dispatcher.drain()

    async def order(self, order_id: str) -> dict[str, Any]:
        """``GET /orders/{order_id}``, which must answer 200."""
        response = await self.client.get(f"/orders/{order_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


OpenShop = Callable[..., AbstractAsyncContextManager[Shop]]


def wall_clock() -> ManualClock:
    """A ManualClock starting at the wall clock's time: the outbox's times then agree
    with those of a ``seawall outbox`` command run in another process."""
    return ManualClock(time.time())
