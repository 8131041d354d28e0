"""seawall's pytest plugin (registered through the ``pytest11`` entry point).

Fixtures: ``seawall_clock`` (a ManualClock), ``faulty_upstream`` (a started
FaultyUpstream, stopped after the test), ``payment_provider`` (a started
PaymentProvider, likewise) and ``seawall_no_waits`` (backoff and Retry-After
waits become no-ops for the test).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import disable_waits
from ._clock import ManualClock


@pytest.fixture
def seawall_clock() -> ManualClock:
    """A :class:`~seawall.testing.ManualClock` starting at 0."""
    return ManualClock()


@pytest.fixture
def faulty_upstream() -> Iterator[object]:
    """A started :class:`~seawall.testing.FaultyUpstream` on a random loopback port."""
    from ._upstream import FaultyUpstream

    with FaultyUpstream() as upstream:
        yield upstream


@pytest.fixture
def payment_provider() -> Iterator[object]:
    """A started :class:`~seawall.testing.PaymentProvider` on a random loopback port."""
    from ._payments import PaymentProvider

    with PaymentProvider() as provider:
        yield provider


@pytest.fixture
def seawall_no_waits() -> Iterator[None]:
    """Backoff and Retry-After waits are no-ops during the test."""
    with disable_waits():
        yield
