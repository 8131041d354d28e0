"""Type-checked (mypy --strict in `make typecheck`), not run: the public API as users write it."""

from __future__ import annotations

from typing import assert_type

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

import seawall
import seawall.db
from seawall.outbox import Entry, Failure, Outbox, Verdict
from seawall.redis import RedisState
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


# -- wave 2: hedging, adaptive limits, the outbox, shared state ------------------------

hedged = seawall.Policy(
    hedge=seawall.Hedge(delay=0.05, max_hedges=1, delay_from="p95"),
    bulkhead=seawall.Bulkhead(
        max_concurrent=100, adaptive=seawall.AdaptiveLimit(min_limit=10, tolerance=2.0)
    ),
    shared=seawall.Shared(
        breaker="advisory",
        bulkhead=seawall.GlobalBulkhead(max_concurrent=40),
        rate_limit=seawall.SharedRateLimit(),
        fallback=True,
    ),
)


async def wave_two() -> None:
    state = RedisState(url_env="REDIS_URL", namespace="shop", budget=0.01)
    registry = seawall.Registry(state=state)
    registry.add("payments", base_url="https://pay.example", policy=hedged)
    engine = create_async_engine("sqlite+aiosqlite:///shop.db")
    seawall.db.watch(engine, action="error")
    outbox = Outbox(registry, engine)
    outbox.route("payments", honours_idempotency_key=True, max_attempts=10)

    @outbox.verifier("payments")
    async def verify(entry: Entry, client: seawall.ResilientClient) -> Verdict:
        response = await client.get(f"/charges/{entry.idempotency_key}")
        if response.status_code == 404:
            return Verdict.not_applied()
        return Verdict.succeeded(response)

    @outbox.compensator("payments")
    async def compensate(entry: Entry, failure: Failure, session: AsyncSession) -> None:
        await outbox.enqueue(session, "payments", "POST", f"/refunds/{entry.id}")

    async with registry, outbox.dispatcher(concurrency=8):
        async with AsyncSession(engine) as session, session.begin():
            ref = await outbox.enqueue(
                session, "payments", "POST", "/charges", json={"amount": 42}, idempotency_key="o-1"
            )
            assert_type(ref.created, bool)
        with seawall.db.allow_calls_in_transaction():
            pass
    try:
        await registry.client("payments").get("/")
    except seawall.CallInTransactionError as exc:
        assert_type(exc.reason, str)
    report = seawall.report_of(ValueError())
    if report is not None:
        assert_type(report.shared, str | None)
        assert_type(report.roles, tuple[str, ...])
