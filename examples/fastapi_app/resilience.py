"""The shop's seawall setup, shared by the FastAPI and the Litestar example.

* :func:`load_settings` reads ``resilience.toml`` and lets environment variables
  point each dependency elsewhere (``PAYMENTS_URL``, ``CATALOG_URL``,
  ``NOTIFICATIONS_URL``);
* :func:`build_registry` turns those settings into a :class:`seawall.Registry`;
* :func:`setup_telemetry` is the hook where tracing gets configured.

Nothing here imports a web framework.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

import seawall

__all__ = ["CONFIG_PATH", "URL_VARIABLES", "build_registry", "load_settings", "setup_telemetry"]

#: The configuration both examples use unless told otherwise.
CONFIG_PATH = Path(__file__).with_name("resilience.toml")

#: Environment variables that override a dependency's ``base_url``.
URL_VARIABLES = {
    "payments": "PAYMENTS_URL",
    "catalog": "CATALOG_URL",
    "notifications": "NOTIFICATIONS_URL",
}

log = structlog.get_logger("shop")


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The TOML configuration as plain data, base URLs taken from the environment where set.

    The result is a fresh, mutable dict in the layout of the file: adjust it
    (tests shorten the timeouts) before handing it to :func:`build_registry`.
    """
    environ = os.environ if environ is None else environ
    with open(config_path or CONFIG_PATH, "rb") as f:
        settings = tomllib.load(f)
    dependencies = settings.setdefault("dependencies", {})
    for name, variable in URL_VARIABLES.items():
        url = environ.get(variable)
        if url:
            dependencies.setdefault(name, {})["base_url"] = url
    return settings


def build_registry(settings: Mapping[str, Any] | None = None) -> seawall.Registry:
    """A registry for the shop's dependencies; validates the whole configuration at once.

    An invalid file raises :class:`seawall.ConfigError` listing every problem,
    one line each, before the app serves anything.
    """
    if settings is None:
        settings = load_settings()
    return seawall.Registry.from_config(seawall.Config.from_mapping(settings))


# ---------------------------------------------------------------------------
# TELEMETRY HOOK. seawall's own telemetry lands in a later release; until then
# this only sets up an OpenTelemetry tracer provider exporting over OTLP/HTTP,
# and only when OTEL_EXPORTER_OTLP_ENDPOINT is set and the SDK is installed
# (``pip install 'seawall[otel]'``). Without the variable it does nothing.

_telemetry_configured = False


def setup_telemetry(app: object) -> bool:
    """Configure tracing for *app* from ``OTEL_EXPORTER_OTLP_ENDPOINT``; True if it did.

    The exporter reads the endpoint (and ``OTEL_EXPORTER_OTLP_HEADERS`` etc.)
    from the environment itself. The tracer provider is process-wide, so it is
    set up once per process whatever the number of apps.
    """
    global _telemetry_configured
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return False
    if _telemetry_configured:
        return True
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("telemetry_unavailable", hint="pip install 'seawall[otel]'")
        return False
    service = os.environ.get("OTEL_SERVICE_NAME", "shop")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _telemetry_configured = True
    log.info("telemetry_configured", app=type(app).__name__, service=service)
    return True
