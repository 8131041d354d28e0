"""Helpers for the example apps' tests (the fixtures live in conftest.py).

Kept out of conftest.py so that test modules can import them by a name no
other conftest shares.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import seawall
from seawall.testing import FaultyUpstream

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
    },
    "catalog": {
        "timeouts": {"attempt": 0.25, "total": 0.6},
        "retry": {"backoff": NO_WAIT},
    },
    "notifications": {"timeouts": {"connect": 0.2, "attempt": 0.2, "total": 0.2}},
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
    payments: FaultyUpstream
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
    """A running shop app and everything a test looks at."""

    framework: str
    client: httpx.AsyncClient
    registry: seawall.Registry
    upstreams: Upstreams

    @property
    def payments(self) -> FaultyUpstream:
        return self.upstreams.payments

    @property
    def catalog(self) -> FaultyUpstream:
        return self.upstreams.catalog

    @property
    def notifications(self) -> FaultyUpstream:
        return self.upstreams.notifications


OpenShop = Callable[[Mapping[str, Any]], AbstractAsyncContextManager[Shop]]
