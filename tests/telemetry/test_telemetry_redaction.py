"""Credentials, sensitive headers and sensitive query values never reach telemetry."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs
from telemetry_support import call_spans, client_spans, policy, unique

import seawall
import seawall.telemetry
from seawall.telemetry._otel import redact_url
from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

PASSWORD = "pw-S3CRET-userinfo"
AUTHORIZATION = "Bearer tok-S3CRET-header"
COOKIE = "cookie-S3CRET-jar"
TOKEN = "tok-S3CRET-query"
API_KEY = "key-S3CRET-query"
SIG = "sig-S3CRET-query"
SECRETS = [PASSWORD, AUTHORIZATION, "tok-S3CRET-header", COOKIE, TOKEN, API_KEY, SIG]


def with_credentials(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://alice:{PASSWORD}@{rest}"


@pytest.fixture
def readers() -> Iterator[tuple[InMemoryMetricReader, CollectorRegistry]]:
    """One MeterProvider read two ways: in memory, and by the Prometheus exporter."""
    reader = InMemoryMetricReader()
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[reader, PrometheusMetricReader(registry=registry)])
    seawall.telemetry.configure(meter_provider=provider)
    yield reader, registry
    provider.shutdown()


async def test_secrets_appear_in_no_span_metric_or_log(
    spans: InMemorySpanExporter,
    readers: tuple[InMemoryMetricReader, CollectorRegistry],
    upstream: FaultyUpstream,
) -> None:
    metric_reader, registry = readers
    dep = unique()
    upstream.route("/private", Fault.error(503), Fault.ok())
    upstream.route("/broken", Fault.error(500))
    params = {"token": TOKEN, "api_key": API_KEY, "sig": SIG, "page": "2"}
    headers = {"Authorization": AUTHORIZATION}
    breaker = seawall.CircuitBreaker(minimum_calls=3, failure_rate_threshold=0.6)
    with capture_logs() as logs:
        async with seawall.ResilientClient(
            dep,
            policy=policy(attempts=2, breaker=breaker),
            base_url=upstream.url,
            cookies={"session": COOKIE},
        ) as client:
            # A retried success (attempt spans, a retry event), a failure (logged
            # at info, a breaker transition) and a rejection (an error span).
            await client.get("/private", params=params, headers=headers)
            await client.get("/broken", params=params, headers=headers)
            with pytest.raises(seawall.CircuitOpenError):
                await client.get("/private", params=params, headers=headers)
        # Credentials in the URL (httpx sends them as Basic auth).
        async with seawall.ResilientClient(
            dep, policy=policy(attempts=1), base_url=with_credentials(upstream.url)
        ) as client:
            assert (await client.get("/broken", params=params)).status_code == 500
        down = f"http://127.0.0.1:{FaultyUpstream.refused_port()}"
        async with seawall.ResilientClient(
            dep, policy=policy(attempts=1), base_url=with_credentials(down)
        ) as client:
            with pytest.raises(httpx.ConnectError):  # an exception recorded on the span
                await client.get("/down", params=params)

    # The secrets did go out: the test is not vacuous.
    sent = upstream.requests("/private")[0]
    assert TOKEN in sent.target
    assert sent.header("authorization") == AUTHORIZATION
    assert COOKIE in (sent.header("cookie") or "")
    basic = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert upstream.requests("/broken")[1].header("authorization") == f"Basic {basic}"

    finished = spans.get_finished_spans()
    assert len(call_spans(finished, dep)) == 5
    assert len(client_spans(finished)) == 5
    attempt = client_spans(finished)[0]
    assert attempt.attributes is not None
    assert attempt.attributes["url.full"] == (
        f"{upstream.url.rstrip('/')}/private?token=REDACTED&api_key=REDACTED&sig=REDACTED&page=2"
    )
    exported = {
        "spans": "\n".join(s.to_json() for s in finished),
        "metrics": metric_reader.get_metrics_data().to_json(),  # type: ignore[union-attr]
        "prometheus": generate_latest(registry).decode(),
        "logs": json.dumps(logs, default=str),
    }
    assert '"seawall.call"' in exported["logs"]
    assert f'seawall_dependency="{dep}"' in exported["prometheus"]
    for where, text in exported.items():
        for secret in [*SECRETS, basic, "alice"]:
            assert secret not in text, f"{secret!r} leaked into {where}"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # Every query value is redacted unless its key is allow-listed (paging by default).
        ("https://user:pw@api.example/v1?x=1", "https://api.example/v1?x=REDACTED"),
        (
            "https://api.example/v1?Token=a&API_KEY=b&Sig=c&X-Amz-Signature=d&page=e",
            "https://api.example/v1?Token=REDACTED&API_KEY=REDACTED&Sig=REDACTED"
            "&X-Amz-Signature=REDACTED&page=e",
        ),
        (
            "https://api.example/v1?token=a&token=b",
            "https://api.example/v1?token=REDACTED&token=REDACTED",
        ),
        ("http://api.example:8080/", "http://api.example:8080/"),
    ],
)
def test_url_full_drops_userinfo_and_masks_sensitive_query_values(url: str, expected: str) -> None:
    assert redact_url(httpx.URL(url)) == expected
