"""The telemetry engine: spans, metrics and log events, fed by the transport.

Nothing secret leaves through it (see :mod:`._redact`): ``url.full`` and log
URLs are redacted, endpoint URLs (breaker gauges' ``seawall.endpoint``, breaker
transition events) have their passwords masked, the span ``exception`` event
carries the error's message and stacktrace scrubbed of header values and URL
passwords, and ``http.request.method`` is a standard method or ``_OTHER``, so
made-up methods cannot multiply the metric series.
"""

from __future__ import annotations

import logging
import traceback
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import structlog
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from .._compat import meter_provider_set, tracer_provider_set
from .._report import CallReport, Outcome
from . import _redact

if TYPE_CHECKING:
    import httpx

    from .._breaker import Transition
    from .._runtime import Runtime

__all__ = [
    "CallTelemetry",
    "TelemetrySettings",
    "configure",
    "disable",
    "log_call",
    "settings",
    "start_call",
    "track",
]

_logger = structlog.get_logger("seawall")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "off": 100}

_FAILED = frozenset(
    {
        Outcome.HTTP_ERROR,
        Outcome.TIMEOUT,
        Outcome.TRANSPORT_ERROR,
        Outcome.CONNECT_ERROR,
        Outcome.RETRY_EXHAUSTED,
        Outcome.CIRCUIT_OPEN,
        Outcome.BULKHEAD_FULL,
        Outcome.RATE_LIMITED,
        Outcome.DEADLINE_EXCEEDED,
        Outcome.OUTCOME_UNKNOWN,
        Outcome.ERROR,
    }
)
_REJECTIONS = frozenset({Outcome.CIRCUIT_OPEN, Outcome.BULKHEAD_FULL, Outcome.RATE_LIMITED})
_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2, "forced_open": 3, "disabled": 0}
# Seconds: the bucket boundaries the HTTP semantic conventions advise for
# ``http.client.request.duration``. Without them an SDK falls back to its
# default buckets (0, 5, 10, 25, ... 10000), made for milliseconds: every call
# under five seconds would land in one bucket and no quantile could be read.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetrySettings:
    """How seawall reports. ``None`` providers mean the global OpenTelemetry ones."""

    enabled: bool = True
    tracer_provider: trace.TracerProvider | None = None
    meter_provider: metrics.MeterProvider | None = None
    #: Log level of ``seawall.call`` for plain successes, and for failures and fallbacks.
    success_log_level: Literal["debug", "info", "warning", "off"] = "debug"
    failure_log_level: Literal["debug", "info", "warning", "off"] = "info"
    #: Level of ``seawall.call`` for calls refused outright (open breaker, full
    #: bulkhead, rate limit) with no fallback; logged only into a configured structlog.
    rejection_log_level: Literal["debug", "info", "warning", "off"] = "debug"
    #: Attempt (CLIENT) spans: "auto" adds them unless opentelemetry-instrumentation-httpx
    #: already makes one per physical request on the inner transport.
    attempt_spans: Literal["auto", "on", "off"] = "auto"
    #: Query keys whose values may appear in ``url.full`` and log events; every
    #: other query value is shown as ``REDACTED`` (see docs/security.md).
    query_allowlist: frozenset[str] = _redact.DEFAULT_QUERY_ALLOWLIST


_settings = TelemetrySettings()


def settings() -> TelemetrySettings:
    return _settings


def configure(**changes: Any) -> TelemetrySettings:
    """Change how seawall reports (process-wide); returns the previous settings.

    Keywords are :class:`TelemetrySettings` fields, e.g.
    ``configure(tracer_provider=provider, success_log_level="off")``.
    """
    global _settings
    previous = _settings
    _settings = replace(_settings, **changes)
    _engine.reset()
    if _live:
        # The gauges observe live runtimes: register them now, not at the next call.
        _engine.meter_ready()
    return previous


def disable() -> TelemetrySettings:
    """Turn every span, metric and log event of seawall off; returns the previous settings."""
    return configure(enabled=False)


def redact_url(url: httpx.URL) -> str:
    """``url.full`` for telemetry: no credentials, only allow-listed query values."""
    return _redact.redact_url(url, _settings.query_allowlist)


class _Engine:
    """Lazily built tracer, meter and instruments, rebuilt when settings change."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._tracer: trace.Tracer | None = None
        self._meter_ready = False
        self._attrs: dict[tuple[object, ...], dict[str, Any]] = {}

    # -- providers -----------------------------------------------------------------

    def tracer(self) -> trace.Tracer | None:
        s = _settings
        if not s.enabled:
            return None
        if self._tracer is not None:
            return self._tracer
        if s.tracer_provider is None and not tracer_provider_set():
            return None
        provider = s.tracer_provider or trace.get_tracer_provider()
        self._tracer = provider.get_tracer("seawall")
        return self._tracer

    def meter_ready(self) -> bool:
        s = _settings
        if not s.enabled:
            return False
        if self._meter_ready:
            return True
        if s.meter_provider is None and not meter_provider_set():
            return False
        provider = s.meter_provider or metrics.get_meter_provider()
        meter = provider.get_meter("seawall")
        self.attempt_duration = meter.create_histogram(
            "http.client.request.duration",
            unit="s",
            description="Duration of HTTP client requests (one per physical attempt).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.call_duration = meter.create_histogram(
            "seawall.call.duration",
            unit="s",
            description="Duration of logical calls through seawall, retries and waits included.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.calls = meter.create_counter(
            "seawall.calls", unit="{call}", description="Logical calls by outcome."
        )
        self.retries = meter.create_counter(
            "seawall.retries", unit="{retry}", description="Retries by reason."
        )
        self.hedges = meter.create_counter(
            "seawall.hedges",
            unit="{request}",
            description="Hedged requests sent, and hedges whose answer won (seawall.hedge.result).",
        )
        self.double_retries = meter.create_counter(
            "seawall.double_retries",
            unit="{request}",
            description="Requests an SDK resent through seawall (two retry layers), by marker.",
        )
        self.rejections = meter.create_counter(
            "seawall.rejections",
            unit="{call}",
            description="Calls refused before anything was sent, by reason.",
        )
        meter.create_observable_gauge(
            "seawall.breaker.state",
            callbacks=[_observe_breaker_state],
            description="Breaker state: 0 closed, 1 half-open, 2 open, 3 forced open.",
        )
        meter.create_observable_gauge(
            "seawall.breaker.failure_rate",
            callbacks=[_observe_failure_rate],
            unit="1",
            description="Failure rate over the breaker's window (absent until minimum_calls).",
        )
        meter.create_observable_gauge(
            "seawall.bulkhead.in_use",
            callbacks=[_observe_bulkhead_in_use],
            description="Bulkhead slots in use: the dependency's calls in flight.",
        )
        meter.create_observable_gauge(
            "seawall.bulkhead.limit",
            callbacks=[_observe_bulkhead_limit],
            description="Bulkhead size now (an adaptive limit moves).",
        )
        meter.create_observable_gauge(
            "seawall.bulkhead.min_rtt",
            callbacks=[_observe_bulkhead_min_rtt],
            unit="s",
            description="An adaptive bulkhead's minimum round-trip time estimate.",
        )
        meter.create_observable_gauge(
            "seawall.pool.connections",
            callbacks=[_observe_pool],
            description="Open connections in the dependency's pool, by state (idle, active).",
        )
        self._meter_ready = True
        return True

    def attrs(self, *key: object) -> dict[str, Any]:
        """A cached attribute mapping: per-call dicts cost more than the lookup."""
        found = self._attrs.get(key)
        if found is None:
            found = self._attrs[key] = _build_attrs(key)
        return found


def _build_attrs(key: tuple[object, ...]) -> dict[str, Any]:
    # Methods arrive normalized (``_OTHER``): the cache stays bounded too.
    kind = key[0]
    if kind == "hedge":
        _, dependency, result = key
        return {"seawall.dependency": dependency, "seawall.hedge.result": result}
    if kind == "span":
        _, dependency, method = key
        if method is None:  # a guard call
            return {"seawall.dependency": dependency}
        return {"seawall.dependency": dependency, "http.request.method": method}
    if kind == "call":
        _, dependency, outcome = key
        return {"seawall.dependency": dependency, "seawall.outcome": outcome}
    if kind == "attempt":
        _, dependency, outcome, method, host, port, status, error = key
        attrs: dict[str, Any] = {
            "seawall.dependency": dependency,
            "seawall.outcome": outcome,
            "http.request.method": method,
            "server.address": host,
            "server.port": port,
        }
        if status is not None:
            attrs["http.response.status_code"] = status
        if error is not None:
            attrs["error.type"] = error
        return attrs
    _, dependency, reason = key
    return {"seawall.dependency": dependency, "seawall.reason": reason}


_engine = _Engine()

# -- observable gauges over the live runtimes ---------------------------------------------

_live: weakref.WeakSet[Runtime] = weakref.WeakSet()


def track(runtime: Runtime) -> None:
    """Called by each Runtime when built, so gauges can observe it."""
    _live.add(runtime)
    if runtime.breaker is not None:
        runtime.breaker.on_transition(on_transition)
    for breaker in runtime.endpoint_breakers.values():
        breaker.on_transition(on_transition)
    # Register the gauges (if a meter provider is there) before any call is made:
    # a breaker or a bulkhead is worth watching before its first call.
    _engine.meter_ready()


def _breakers(rt: Runtime) -> Iterable[tuple[dict[str, str], Any]]:
    if rt.breaker is not None:
        yield {"seawall.dependency": rt.name}, rt.breaker
    for url, b in rt.endpoint_breakers.items():
        yield {"seawall.dependency": rt.name, "seawall.endpoint": _redact.mask_url(url)}, b


def _observe_breaker_state(options: CallbackOptions) -> Iterable[Observation]:
    for rt in list(_live):
        for attrs, b in _breakers(rt):
            yield Observation(_STATE_VALUE[b.state.value], attrs)


def _observe_failure_rate(options: CallbackOptions) -> Iterable[Observation]:
    for rt in list(_live):
        for attrs, b in _breakers(rt):
            rate = b.statistics().failure_rate
            if rate is not None:
                yield Observation(rate, attrs)


def _observe_bulkhead_in_use(options: CallbackOptions) -> Iterable[Observation]:
    for rt in list(_live):
        if rt.bulkhead is not None:
            yield Observation(rt.bulkhead.statistics().in_use, {"seawall.dependency": rt.name})


def _observe_bulkhead_limit(options: CallbackOptions) -> Iterable[Observation]:
    for rt in list(_live):
        if rt.bulkhead is not None:
            yield Observation(rt.bulkhead.statistics().limit, {"seawall.dependency": rt.name})


def _observe_bulkhead_min_rtt(options: CallbackOptions) -> Iterable[Observation]:
    for rt in list(_live):
        adaptive = rt.bulkhead.statistics().adaptive if rt.bulkhead is not None else None
        if adaptive is not None and adaptive.min_rtt is not None:
            yield Observation(adaptive.min_rtt, {"seawall.dependency": rt.name})


def _observe_pool(options: CallbackOptions) -> Iterable[Observation]:
    for rt in list(_live):
        for transport in list(rt.transports):
            stats = transport.pool_statistics()
            if "connections" in stats:
                idle = stats["idle"]
                yield Observation(idle, {"seawall.dependency": rt.name, "state": "idle"})
                yield Observation(
                    stats["connections"] - idle, {"seawall.dependency": rt.name, "state": "active"}
                )


# -- breaker transitions ----------------------------------------------------------------------


def on_transition(event: Transition) -> None:
    if not _settings.enabled:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(
            "seawall.breaker.transition",
            {
                "seawall.dependency": event.dependency,
                "seawall.breaker.from": event.from_state.value,
                "seawall.breaker.to": event.to_state.value,
                "seawall.breaker.reason": event.reason,
            },
        )
    _logger.warning(
        "seawall.breaker.transition",
        dependency=event.dependency,
        # Breakers mask it already; a Transition built elsewhere may not.
        endpoint=_redact.mask_url(event.endpoint) if event.endpoint else None,
        from_state=event.from_state.value,
        to_state=event.to_state.value,
        reason=event.reason,
        open_for=event.open_for,
        **_trace_ids(span),
    )


def _trace_ids(span: trace.Span) -> dict[str, str]:
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


# -- per call -----------------------------------------------------------------------------------


def _instrumented(inner: object) -> bool:
    """Whether opentelemetry-instrumentation-httpx already spans the inner transport's requests."""
    if type(inner).__name__ == "AsyncOpenTelemetryTransport":
        return True
    method = getattr(type(inner), "handle_async_request", None)
    if hasattr(method, "__wrapped__"):
        return True
    return hasattr(getattr(inner, "__dict__", {}).get("handle_async_request"), "__wrapped__")


def _method(method: str) -> tuple[str, str | None]:
    """``http.request.method`` and, when that is ``_OTHER``, the original method."""
    normal = _redact.normalize_method(method)
    return normal, (None if normal == method else method)


def _text(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:  # a broken __str__ must not break the call's telemetry
        return ""


def _chain(error: BaseException) -> Iterable[BaseException]:
    """*error*, its causes and contexts, and the members of exception groups, once each."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        exc = todo.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        yield exc
        todo.extend(x for x in (exc.__cause__, exc.__context__) if x is not None)
        if isinstance(exc, BaseExceptionGroup):
            todo.extend(exc.exceptions)


def _exception_attributes(error: BaseException) -> dict[str, str]:
    """The span ``exception`` event's message and stacktrace, with no secret in them.

    The SDK would record ``str(error)`` and the formatted traceback, where an
    underlying error's message may quote a header value (h11: "Illegal header
    value b'Bearer ...\\n'") or a URL with its password, on any error of the
    chain. Each such message is replaced by its scrubbed form wherever the
    traceback shows it (line by line: an exception group indents each line);
    frames are left as they are.
    """
    stacktrace = "".join(traceback.format_exception(error))
    for exc in _chain(error):
        for raw in (_text(exc), *map(str, getattr(exc, "__notes__", ()))):
            clean = _redact.scrub_message(raw)
            if clean == raw:
                continue
            raw_lines, clean_lines = raw.splitlines(), clean.splitlines()
            if len(raw_lines) != len(clean_lines):
                raw_lines, clean_lines = [raw], [clean]
            for raw_line, clean_line in zip(raw_lines, clean_lines, strict=True):
                if raw_line != clean_line:
                    stacktrace = stacktrace.replace(raw_line, clean_line)
    return {
        "exception.message": _redact.scrub_message(_text(error)),
        # A URL password anywhere else (a frame's source line) is masked too.
        "exception.stacktrace": _redact.mask_url(stacktrace),
    }


class CallTelemetry:
    """The telemetry of one logical call: its span, its attempts, its end."""

    __slots__ = ("_attempt_spans", "_dependency", "_metrics", "_span", "_token", "_tracer")

    def __init__(
        self, tracer: trace.Tracer | None, dependency: str, method: str | None, inner: object
    ) -> None:
        self._tracer = tracer
        self._dependency = dependency
        self._metrics = _engine.meter_ready()
        self._span: trace.Span | None = None
        self._token: object | None = None
        s = _settings
        self._attempt_spans = tracer is not None and (
            s.attempt_spans == "on" or (s.attempt_spans == "auto" and not _instrumented(inner))
        )
        if tracer is not None:
            if method is None:  # a guard call
                name, attrs = f"seawall {dependency}", _engine.attrs("span", dependency, None)
            else:
                normal, original = _method(method)
                # As the HTTP semantic conventions name a span of an unknown method.
                name = f"seawall {dependency} {'HTTP' if original else normal}"
                attrs = _engine.attrs("span", dependency, normal)
                if original is not None:
                    attrs = {**attrs, "http.request.method_original": original}
            self._span = tracer.start_span(name, kind=SpanKind.INTERNAL, attributes=attrs)
            # The call span is current for the attempts (and for an httpx
            # instrumentation's spans under it, or the guarded function's own).
            self._token = otel_context.attach(trace.set_span_in_context(self._span))

    # attempts

    def hedge_sent(self) -> None:
        if self._metrics:
            _engine.hedges.add(1, _engine.attrs("hedge", self._dependency, "sent"))

    def hedge_won(self) -> None:
        if self._metrics:
            _engine.hedges.add(1, _engine.attrs("hedge", self._dependency, "won"))

    def attempt_started(
        self, request: httpx.Request, resend_count: int, hedge: bool = False
    ) -> trace.Span | None:
        if not self._attempt_spans:
            if self._span is not None:
                propagate.inject(request.headers)
            return None
        url = request.url
        method, original = _method(request.method)
        attrs: dict[str, Any] = {
            "http.request.method": method,
            "server.address": url.host,
            "server.port": url.port or (443 if url.scheme == "https" else 80),
            "url.full": redact_url(url),
        }
        if original is not None:
            attrs["http.request.method_original"] = original
        if resend_count:
            attrs["http.request.resend_count"] = resend_count
        if hedge:
            attrs["seawall.hedge"] = True
        span = self._tracer.start_span(  # type: ignore[union-attr]
            "HTTP" if original else method, kind=SpanKind.CLIENT, attributes=attrs
        )
        propagate.inject(request.headers, context=trace.set_span_in_context(span))
        return span

    def attempt_ended(
        self,
        span: trace.Span | None,
        request: httpx.Request,
        duration: float,
        outcome: str,
        status: int | None,
        error: str | None,
    ) -> None:
        if span is not None:
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            if error is not None:
                span.set_attribute("error.type", error)
                span.set_status(Status(StatusCode.ERROR))
            span.end()
        if self._metrics:
            url = request.url
            _engine.attempt_duration.record(
                duration,
                _engine.attrs(
                    "attempt",
                    self._dependency,
                    outcome,
                    _redact.normalize_method(request.method),
                    url.host,
                    url.port or (443 if url.scheme == "https" else 80),
                    status,
                    error,
                ),
            )

    def retry(self, reason: str, attempt: int, delay: float) -> None:
        if self._span is not None:
            self._span.add_event(
                "seawall.retry",
                {
                    "seawall.retry.reason": reason,
                    "seawall.attempt": attempt,
                    "seawall.retry.delay": delay,
                },
            )
        if self._metrics:
            _engine.retries.add(1, _engine.attrs("reason", self._dependency, reason))

    # the end

    def finished(
        self, report: CallReport | None, url: httpx.URL | None, error: BaseException | None
    ) -> None:
        span = self._span
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
        outcome = report.outcome if report is not None else Outcome.CANCELLED
        if self._metrics and report is not None:
            _engine.calls.add(1, _engine.attrs("call", self._dependency, outcome))
            _engine.call_duration.record(
                report.elapsed, _engine.attrs("call", self._dependency, outcome)
            )
            if outcome in _REJECTIONS:
                _engine.rejections.add(1, _engine.attrs("reason", self._dependency, outcome))
        if span is not None:
            if report is not None:
                span.set_attributes(_span_attributes(report))
                if outcome in _REJECTIONS:
                    span.add_event("seawall.rejected", {"seawall.reason": outcome})
                if outcome in _FAILED:
                    span.set_attribute("error.type", outcome)
                    if report.fallback is None:
                        span.set_status(Status(StatusCode.ERROR, outcome))
            else:
                span.set_attribute("seawall.outcome", Outcome.CANCELLED)
            if error is not None and report is not None and report.fallback is None:
                # The SDK's own attributes are overridden by these.
                span.record_exception(error, attributes=_exception_attributes(error))
            span.end()
        if report is not None:
            log_call(report, url, span)


def _span_attributes(report: CallReport) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "seawall.outcome": report.outcome,
        "seawall.attempts": report.attempts,
        "seawall.bulkhead.wait": report.bulkhead_wait,
    }
    if report.endpoint is not None:
        attrs["seawall.endpoint"] = report.endpoint
    if report.retries:
        attrs["seawall.retry.reasons"] = list(report.retries)
    if report.retry_stopped is not None:
        attrs["seawall.retry.stopped"] = report.retry_stopped
    if report.breaker_state_before is not None:
        attrs["seawall.breaker.state_before"] = report.breaker_state_before
    if report.breaker_state is not None:
        attrs["seawall.breaker.state"] = report.breaker_state
    if report.fallback is not None:
        attrs["seawall.fallback"] = report.fallback
    if report.shared is not None:
        attrs["seawall.shared"] = report.shared
    if report.deadline_remaining is not None:
        attrs["seawall.deadline.remaining"] = report.deadline_remaining
    if report.status_code is not None:
        attrs["http.response.status_code"] = report.status_code
    t = report.timeouts
    if t is not None:
        attrs.update(_timeout_attributes(t))
    return attrs


_timeout_attrs: dict[object, dict[str, float]] = {}


def _timeout_attributes(t: Any) -> dict[str, float]:
    """A policy's timeouts as span attributes, built once per Timeouts (frozen, hashable)."""
    found = _timeout_attrs.get(t)
    if found is None:
        if len(_timeout_attrs) > 1024:  # policies come from config: a handful, bounded
            _timeout_attrs.clear()
        found = _timeout_attrs[t] = {
            f"seawall.timeout.{phase}": float(value)
            for phase in ("connect", "read", "write", "pool", "attempt", "total")
            if (value := getattr(t, phase)) is not None
        }
    return found


def success_logged() -> bool:
    """Whether a plain success would be logged (then it is worth building its report)."""
    s = _settings
    return s.enabled and _LEVELS[s.success_log_level] < 100 and structlog.is_configured()


def log_call(report: CallReport, url: httpx.URL | None, span: trace.Span | None = None) -> None:
    """The ``seawall.call`` event. Plain successes are logged only once the app has
    configured structlog: an unconfigured structlog prints every level to stdout,
    and a line per outbound call is not a library's to impose."""
    s = _settings
    if not s.enabled:
        return
    outcome = report.outcome
    if outcome in _REJECTIONS and report.fallback is None:
        # An outage refuses calls by the thousand: one line each, at info,
        # would flood the app's logs (the metrics and the breaker's transition
        # event say it once). Like successes, only into a configured structlog.
        level = _LEVELS[s.rejection_log_level]
        quiet = not structlog.is_configured()
    else:
        failed = outcome in _FAILED or report.fallback is not None
        level = _LEVELS[s.failure_log_level if failed else s.success_log_level]
        quiet = not failed and not structlog.is_configured()
    if level >= 100 or quiet:
        return
    logger = _bound_logger()
    is_enabled_for = getattr(logger, "is_enabled_for", None)
    if is_enabled_for is not None and not is_enabled_for(level):
        return  # filtered: don't build an event only to drop it
    fields = report.as_dict()
    timeouts = fields.pop("timeouts") or {}
    for phase, value in timeouts.items():
        fields[f"timeout_{phase}"] = value
    if url is not None:
        fields["url"] = redact_url(url)
    if span is not None:
        fields.update(_trace_ids(span))
    logger.log(level, "seawall.call", **fields)


_bound: tuple[tuple[int, ...], Any] | None = None


def _bound_logger() -> Any:
    """seawall's logger, bound once per structlog configuration.

    The module-level proxy binds anew on every call (over a microsecond); the
    bound logger is kept until the app changes its configuration (the
    wrapper, the processors or the logger factory: ``capture_logs`` included).
    """
    global _bound
    config = structlog.get_config()
    stamp = (
        id(config["wrapper_class"]),
        id(config["processors"]),
        id(config["logger_factory"]),
        id(config["context_class"]),
    )
    if _bound is None or _bound[0] != stamp:
        _bound = (stamp, structlog.get_logger("seawall").bind())
    return _bound[1]


def start_call(dependency: str, method: str | None, inner: object) -> CallTelemetry | None:
    """The span and metrics of a new call, or None when neither is configured
    (then only :func:`log_call` runs at the end)."""
    if not _settings.enabled:
        return None
    tracer = _engine.tracer()
    if tracer is None and not _engine.meter_ready():
        return None
    return CallTelemetry(tracer, dependency, method, inner)


# -- two retry layers -----------------------------------------------------------------------

#: Request headers by which an SDK marks its own resends (Stainless-built SDKs:
#: openai, anthropic). stripe and githubkit send no such marker.
RETRY_MARKERS = ("x-stainless-retry-count",)

_double_retry_warned: set[str] = set()


def note_double_retry(dependency: str, header: str, value: str) -> None:
    """An SDK resent a request through seawall: two retry layers multiply attempts.

    Logged once per dependency (warning, ``seawall.double_retry``) with the fix,
    counted every time (``seawall.double_retries``).
    """
    if not _settings.enabled:
        return
    if _engine.meter_ready():
        _engine.double_retries.add(1, _engine.attrs("reason", dependency, header))
    if dependency in _double_retry_warned:
        return
    _double_retry_warned.add(dependency)
    _logger.warning(
        "seawall.double_retry",
        dependency=dependency,
        header=header,
        value=value,
        fix=(
            "turn the SDK's own retries off (openai/anthropic max_retries=0, stripe "
            "max_network_retries=0, githubkit auto_retry=False): seawall is the one retry layer"
        ),
    )
