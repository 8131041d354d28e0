"""A guard taken before Registry.reload() follows the reloaded policy."""

from __future__ import annotations

import pytest

import seawall
from seawall.testing import ManualClock

pytestmark = pytest.mark.anyio


def config(max_concurrent: int, minimum_calls: int = 2) -> dict[str, object]:
    return {
        "dependencies": {
            "db": {
                "bulkhead": {"max_concurrent": max_concurrent},
                "breaker": {"minimum_calls": minimum_calls, "window_size": 2},
                "retry": False,
            }
        }
    }


async def boom() -> None:
    raise ConnectionError("down")


async def test_a_guard_follows_reload_and_keeps_an_unchanged_breaker() -> None:
    registry = seawall.Registry.from_config(config(1), clock=ManualClock())
    g = registry.guard("db")
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await g.call(boom)
    assert g.breaker is not None
    assert g.breaker.state is seawall.BreakerState.OPEN

    registry.reload(config(7))  # bulkhead changed, breaker unchanged
    assert g.bulkhead is registry.bulkhead("db")
    assert g.bulkhead is not None
    assert g.bulkhead.statistics().limit == 7
    assert g.breaker is registry.breaker("db")
    assert g.breaker.state is seawall.BreakerState.OPEN  # state kept

    registry.reload(config(7, minimum_calls=1))  # breaker changed: a fresh one
    assert g.breaker.state is seawall.BreakerState.CLOSED
    assert g.policy.breaker is not None
    assert g.policy.breaker.minimum_calls == 1
