"""A call's report says whether shared state informed it: ``shared="redis"``, or
``"local"`` when Redis was slower than the budget or the state was degraded;
None for a dependency that shares nothing. The span carries the same value."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from shared_helpers import Cluster, shared_policy, until
from shared_redis_server import RedisServer

import seawall
import seawall.telemetry
from seawall.asgi import status_app

pytestmark = pytest.mark.anyio

EVERY_CALL_ASKS = seawall.Shared(
    bulkhead=seawall.GlobalBulkhead(max_concurrent=4, grant_step=1, idle_release=0.0),
)


def policy() -> seawall.Policy:
    return shared_policy(shared=EVERY_CALL_ASKS, bulkhead=seawall.Bulkhead(max_concurrent=10))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """A real SDK TracerProvider handed to seawall (never the global one), then taken back."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = seawall.telemetry.settings().tracer_provider
    seawall.telemetry.configure(tracer_provider=provider)
    try:
        yield exporter
    finally:
        seawall.telemetry.configure(tracer_provider=previous)
        provider.shutdown()


async def report_of_failure(guard: seawall.Guard) -> seawall.CallReport:
    async def boom() -> None:
        raise ConnectionError("upstream down")

    try:
        await guard.call(boom)
    except ConnectionError as exc:
        report = seawall.report_of(exc)
        assert report is not None
        return report
    raise AssertionError("the call did not fail")


async def test_connected_calls_say_redis_and_the_span_says_so(
    faulty: Cluster, spans: InMemorySpanExporter
) -> None:
    (a,) = await faulty.add(policy())
    report = await report_of_failure(a.guard)
    assert report.shared == "redis"
    assert report.as_dict()["shared"] == "redis"
    [span] = [
        s for s in spans.get_finished_spans() if s.attributes and "seawall.outcome" in s.attributes
    ]
    assert span.attributes is not None
    assert span.attributes["seawall.shared"] == "redis"


async def test_a_grant_later_than_budget_makes_the_call_local(
    faulty: Cluster, own_redis: RedisServer
) -> None:
    (a,) = await faulty.add(policy(), budget=0.02, command_timeout=2.0)
    assert (await report_of_failure(a.guard)).shared == "redis"
    # Strict mode gives the slot back at the end of the loop's turn (a call
    # starting before then would take it, asking Redis nothing): let it go.
    await until(lambda: a.guard.bulkhead.held == 0 and a.guard.bulkhead._flush is None)
    own_redis.slow(400)  # CLIENT PAUSE 400 ms ALL: the next grant comes late
    report = await report_of_failure(a.guard)
    assert report.shared == "local"
    assert a.state.counters.local_decisions["bulkhead"] >= 1
    # Once the late grant has landed (Redis answers again), calls say "redis"
    # again: the mark is per call, not sticky.
    asked = sum(a.state.counters.round_trips.values())
    await until(lambda: sum(a.state.counters.round_trips.values()) > asked)
    assert (await report_of_failure(a.guard)).shared == "redis"


async def test_degraded_state_makes_every_call_local(
    faulty: Cluster, own_redis: RedisServer
) -> None:
    (a,) = await faulty.add(policy(), budget=0.02, command_timeout=0.2)
    own_redis.kill()
    for _ in range(3):
        await a.state.sync()
    assert a.state.status == "degraded"
    report = await report_of_failure(a.guard)
    assert report.shared == "local"


async def test_a_dependency_that_shares_nothing_has_no_shared_field(
    faulty: Cluster,
) -> None:
    (a,) = await faulty.add(policy())
    plain = a.registry.guard("plain", seawall.Policy(retry=None, breaker=None))
    report = await report_of_failure(plain)
    assert report.shared is None
    assert "shared" not in report.as_dict()


# -- the status app's ?scope=cluster ------------------------------------------------------

ADMIN = {"Authorization": "Bearer status-token"}
ADVISORY = seawall.Shared(breaker="advisory")


async def post(registry: seawall.Registry, path: str) -> httpx.Response:
    app = status_app(registry, admin_token="status-token")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://status") as client:
        return await client.post(path, headers=ADMIN)


async def test_status_app_force_open_with_scope_cluster_reaches_the_other_replica(
    cluster: Cluster,
) -> None:
    a, b = await cluster.add(shared_policy(shared=ADVISORY), 2)
    response = await post(a.registry, "/pay/breaker/force-open?scope=cluster&ttl=60")
    assert response.status_code == 200
    assert response.json()["breaker"]["state"] == "forced_open"
    assert b.breaker.state.value == "closed"
    await cluster.sync_all()
    await cluster.sync_all()
    assert b.breaker.state.value == "forced_open"
    response = await post(a.registry, "/pay/breaker/reset?scope=cluster")
    assert response.status_code == 200
    await cluster.sync_all()
    await cluster.sync_all()
    assert b.breaker.state.value == "closed"


async def test_status_app_scope_local_stays_here(cluster: Cluster) -> None:
    a, b = await cluster.add(shared_policy(shared=ADVISORY), 2)
    response = await post(a.registry, "/pay/breaker/force-open?scope=local")
    assert response.status_code == 200
    await cluster.sync_all()
    await cluster.sync_all()
    assert a.breaker.state.value == "forced_open"
    assert b.breaker.state.value == "closed"


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("scope=everywhere", "scope: must be 'local' or 'cluster', got 'everywhere'"),
        ("scope=cluster&ttl=soon", "ttl: must be a positive number of seconds"),
        ("scope=cluster&ttl=-1", "got '-1'"),
        ("ttl=5", "with scope=cluster"),
        ("scope=cluster&force=1", "unknown query parameter 'force'"),
    ],
)
async def test_status_app_bad_query_is_400_naming_it(
    cluster: Cluster, query: str, error: str
) -> None:
    (a,) = await cluster.add(shared_policy(shared=ADVISORY))
    response = await post(a.registry, f"/pay/breaker/force-open?{query}")
    assert response.status_code == 400
    assert error in response.json()["error"]
    assert a.breaker.state.value == "closed"  # nothing changed


async def test_status_app_scope_cluster_needs_a_shared_breaker(cluster: Cluster) -> None:
    (a,) = await cluster.add(shared_policy(shared=ADVISORY))
    a.registry.guard("local-only", seawall.Policy(retry=None))
    response = await post(a.registry, "/local-only/breaker/force-open?scope=cluster")
    assert response.status_code == 409
    assert "does not share its breaker" in response.json()["error"]
    assert a.registry.breaker("local-only").state.value == "closed"


async def test_status_app_scope_cluster_reaches_every_endpoint_breaker(cluster: Cluster) -> None:
    """A dependency with endpoints has an advisory breaker per endpoint: all are forced."""
    endpoints = ["https://primary.example", "https://backup.example"]
    replicas = []
    for _ in range(2):
        registry = seawall.Registry(clock=cluster.clock, state=cluster.state())
        registry.add(
            "pay",
            endpoints=endpoints,
            transport=httpx.MockTransport(lambda request: httpx.Response(200)),
            policy=shared_policy(shared=ADVISORY),
        )
        await cluster.stack.enter_async_context(registry)
        replicas.append(registry)
    a, b = replicas
    response = await post(a, "/pay/breaker/force-open?scope=cluster")
    assert response.status_code == 200
    for registry in (a, b, a, b):
        assert registry.state is not None
        assert await registry.state.sync()
    assert {url: br.state.value for url, br in b.breakers("pay").items()} == dict.fromkeys(
        endpoints, "forced_open"
    )
