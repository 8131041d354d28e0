"""Type-checked (mypy --strict in `make typecheck`), not run: the public API as users write it."""

from __future__ import annotations

from typing import assert_type

import httpx

import seawall
from seawall.testing import ManualClock, assert_report, disable_waits, force_open

policy = seawall.Policy(
    timeouts=seawall.Timeouts(connect=2, read=5, attempt=5, total=10),
    retry=seawall.Retry(attempts=3, backoff=seawall.Backoff(initial=0.1), budget=None),
    bulkhead=seawall.Bulkhead(max_concurrent=10),
    breaker=seawall.CircuitBreaker(failure_rate_threshold=0.5, window="time", window_size=30),
    rate_limit=seawall.RateLimit(rate=100),
    fallback=seawall.Fallback(stale_if_error=300, default=httpx.Response(503)),
    pool=seawall.Pool(max_connections=50),
)
assert_type(seawall.Policy.from_mapping({"retry": False}), seawall.Policy)

guard = seawall.guard("db", policy, clock=ManualClock())


@guard
async def load(user_id: int) -> dict[str, int]:
    return {"id": user_id}


async def use() -> None:
    assert_type(await load(1), dict[str, int])
    assert_type(await guard.call(load, 2), dict[str, int])
    async with guard:
        pass
    breaker = guard.breaker
    if breaker is not None:
        assert_type(breaker.state, seawall.BreakerState)
        assert_type(breaker.statistics().failure_rate, float | None)
        breaker.on_transition(lambda t: print(t.to_state))

    registry = seawall.Registry.from_toml("resilience.toml")
    registry.add("payments", base_url="https://pay.example", policy=policy)
    async with registry:
        client = registry.client("payments")
        assert_type(client, seawall.ResilientClient)
        response = await client.post("/charges", json={}, idempotency_key="order-1")
        report = seawall.report_of(response)
        if report is not None:
            assert_type(report.outcome, str)
        assert_report(response, outcome="success")
        force_open(registry, "payments")
        try:
            await client.get("/")
        except seawall.CircuitOpenError as exc:
            assert_type(exc.retry_after, float | None)
        except seawall.OutcomeUnknownError as exc:
            assert_type(exc.dependency, str | None)

    with disable_waits(), seawall.deadline(2.0):
        assert_type(seawall.deadline_remaining(), float | None)

    transport = seawall.ResilientTransport("sdk", policy)
    async with httpx.AsyncClient(transport=transport) as sdk_client:
        await sdk_client.get("https://api.example/")
