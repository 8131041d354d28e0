"""The example's configuration file, its environment overrides and the telemetry hook."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from example_shop_harness import Upstreams
from examples.fastapi_app import resilience

import seawall


def test_shipped_config_is_valid_and_protects_each_dependency() -> None:
    config = seawall.load_config(resilience.CONFIG_PATH)

    assert set(config.dependencies) == {"payments", "catalog", "notifications"}
    payments = config.dependencies["payments"].policy
    assert payments.bulkhead == seawall.Bulkhead(max_concurrent=20)
    assert payments.breaker is not None
    assert payments.breaker.minimum_calls <= 5
    assert payments.retry is not None
    assert payments.retry.attempts > 1
    assert payments.timeouts.total == 5.0

    catalog = config.dependencies["catalog"].policy
    assert catalog.fallback is not None
    assert catalog.fallback.stale_if_error == 300.0
    assert catalog.retry is not None

    notifications = config.dependencies["notifications"].policy
    assert notifications.retry is None
    assert notifications.timeouts.attempt == 0.5
    # Inherited from [defaults], key by key.
    assert notifications.timeouts.read == 5.0

    # The outbox: charges are resent with their key; notifications never (at most once).
    charges = config.dependencies["payments"].outbox
    assert charges is not None
    assert charges.honours_idempotency_key is True
    assert charges.send_deadline > payments.timeouts.total
    mails = config.dependencies["notifications"].outbox
    assert mails is not None
    assert mails.honours_idempotency_key is False


def test_environment_overrides_base_urls() -> None:
    environ = {"PAYMENTS_URL": "https://pay.example", "CATALOG_URL": ""}

    settings = resilience.load_settings(environ=environ)
    registry = resilience.build_registry(settings)

    assert str(registry.client("payments").base_url) == "https://pay.example"
    # An empty variable keeps the file's URL.
    assert str(registry.client("catalog").base_url) == "http://127.0.0.1:8102"
    assert str(registry.client("notifications").base_url) == "http://127.0.0.1:8103"


def test_invalid_settings_list_every_problem() -> None:
    settings = resilience.load_settings(environ={"PAYMENTS_URL": "ftp://nope"})
    settings["dependencies"]["catalog"]["timeouts"]["attempt"] = -1

    with pytest.raises(seawall.ConfigError) as info:
        resilience.build_registry(settings)

    assert any(p.startswith("dependencies.payments.base_url:") for p in info.value.problems)
    assert any(p.startswith("dependencies.catalog.timeouts.attempt:") for p in info.value.problems)


def test_module_level_apps_exist() -> None:
    from examples.fastapi_app.app import app as fastapi_app
    from examples.litestar_app.app import app as litestar_app
    from fastapi import FastAPI
    from litestar import Litestar

    assert isinstance(fastapi_app, FastAPI)
    assert isinstance(litestar_app, Litestar)


def test_telemetry_hook_does_nothing_without_the_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.setattr(resilience, "_telemetry_configured", False)

    assert resilience.setup_telemetry(object()) is False


def test_telemetry_hook_sets_up_an_otlp_tracer_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("opentelemetry.sdk")
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    installed: list[Any] = []
    # The global provider can be set once per process: catch it instead.
    monkeypatch.setattr(trace, "set_tracer_provider", installed.append)
    monkeypatch.setattr(resilience, "_telemetry_configured", False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")

    assert resilience.setup_telemetry(object()) is True
    assert resilience.setup_telemetry(object()) is True  # once per process

    [provider] = installed
    assert isinstance(provider, TracerProvider)
    provider.shutdown()


def test_play_upstreams_break_on_command(upstreams: Upstreams) -> None:
    from examples.fastapi_app import upstreams as play

    provider = upstreams.payments
    servers = {"catalog": upstreams.catalog, "notifications": upstreams.notifications}
    charge = {"order_id": "o-1", "amount": 100}

    assert play.apply(provider, servers, "catalog", "ok") == "catalog: ok"
    assert httpx.get(f"{upstreams.catalog.url}/items").json() == play.ITEMS
    assert play.apply(provider, servers, "catalog", "500") == "catalog: 500"
    assert httpx.get(f"{upstreams.catalog.url}/items").status_code == 500

    assert play.apply(provider, servers, "payments", "402") == "payments: 402"
    assert httpx.post(f"{provider.url}/charges", json=charge).status_code == 402
    assert play.ledger(provider) == "no charges"  # declined: nothing charged
    assert play.apply(provider, servers, "payments", "ok") == "payments: ok"
    headers = {"Idempotency-Key": "o-1"}
    assert httpx.post(f"{provider.url}/charges", json=charge, headers=headers).status_code == 201
    assert play.ledger(provider) == "ch_000001  o-1               100  key=o-1"

    assert play.apply(provider, servers, "checks", "404") == "checks: 404"
    assert httpx.get(f"{provider.url}/charges/o-1").status_code == 404  # charged, yet 404
    assert play.apply(provider, servers, "cancels", "503") == "cancels: 503"
    assert httpx.post(f"{provider.url}/charges/o-1/cancel").status_code == 503
    assert play.apply(provider, servers, "cancels", "ok") == "cancels: ok"
    assert httpx.post(f"{provider.url}/charges/o-1/cancel").status_code == 200
    assert play.ledger(provider).endswith("  cancelled")

    assert play.apply(provider, servers, "payments", "teapot") == "unknown fault 'teapot'"
    assert play.apply(provider, servers, "search", "500") == "unknown service 'search'"


def test_the_database_is_shop_db_unless_database_url_says_otherwise() -> None:
    from examples.fastapi_app import shop

    assert shop.database_url({}) == "sqlite+aiosqlite:///shop.db"
    assert shop.database_url({"DATABASE_URL": ""}) == "sqlite+aiosqlite:///shop.db"
    elsewhere = "postgresql+asyncpg://shop@db/shop"
    assert shop.database_url({"DATABASE_URL": elsewhere}) == elsewhere
