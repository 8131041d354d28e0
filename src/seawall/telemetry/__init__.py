"""Telemetry: OpenTelemetry spans and metrics, and structlog events, for every call.

seawall only reads the global OpenTelemetry providers (or those passed to
:func:`configure`) and gets its logger from structlog; it never configures
tracing, metrics or logging itself. With no OpenTelemetry SDK installed and
configured, a call pays a couple of attribute checks, nothing more.

What is emitted (see docs/observability.md for the full reference):

* an INTERNAL span per logical call, ``seawall {dependency} {METHOD}``, with
  the ``seawall.*`` attributes, and under it a CLIENT span per attempt
  (``GET``) with the HTTP semantic conventions and
  ``http.request.resend_count`` on resends; retries, breaker transitions and
  rejections as span events; W3C trace context injected into each attempt;
* metrics ``http.client.request.duration``, ``seawall.call.duration``,
  ``seawall.calls``, ``seawall.retries``, ``seawall.rejections`` and
  observable gauges of breakers, bulkheads and pools;
* a structlog event ``seawall.call`` per call (info for failures and
  fallbacks, debug for plain successes) and ``seawall.breaker.transition``
  (warning) per breaker transition, with ``trace_id`` and ``span_id``.
"""

from __future__ import annotations

from ._otel import TelemetrySettings, configure, disable, settings

__all__ = ["TelemetrySettings", "configure", "disable", "settings"]
