"""The outbox's telemetry: spans, metrics and log events.

Spans follow OpenTelemetry's messaging conventions for a producer and a
consumer far apart in time: ``seawall.outbox enqueue DEP`` (PRODUCER) in the
user's trace; each dispatch (and verify, compensate, reconcile) a CONSUMER
span that starts a new trace **linked** to the enqueue span, with the
ResilientClient call span as its child.

Metrics use the same providers as the rest of seawall (see
``seawall.telemetry.configure``). The entry gauges are fed by one grouped
COUNT that a dispatcher runs every 15 s, never by a query per scrape.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager as ContextManager
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from .._compat import meter_provider_set
from ..telemetry import _otel

if TYPE_CHECKING:
    from ._types import Entry

__all__ = [
    "attention",
    "dispatch_span",
    "enqueue_span",
    "instruments",
    "track_counts",
    "transition",
]

_logger = structlog.get_logger("seawall")

SYSTEM = "seawall.outbox"
#: Seconds: enqueue-to-success lags run from milliseconds to days.
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)


def _tracer() -> trace.Tracer | None:
    return _otel._engine.tracer()


class EnqueueSpan:
    """The enqueue span (if traced) and the trace context stored with the entry."""

    __slots__ = ("carrier", "span")

    def __init__(self, span: trace.Span | None, carrier: str | None) -> None:
        self.span = span
        self.carrier = carrier

    def created(self, entry_id: int, created: bool) -> None:
        if self.span is not None:
            self.span.set_attribute("messaging.message.id", str(entry_id))
            if not created:
                self.span.set_attribute("seawall.outbox.duplicate", True)


def _carrier() -> str | None:
    """The current W3C trace context as JSON, or None without a valid span."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return json.dumps(carrier, separators=(",", ":")) if carrier else None


@contextmanager
def enqueue_span(dependency: str) -> Iterator[EnqueueSpan]:
    tracer = _tracer()
    if tracer is None:
        # No seawall spans, but the caller's own trace (if any) is still stored.
        yield EnqueueSpan(None, _carrier())
        return
    with tracer.start_as_current_span(
        f"seawall.outbox enqueue {dependency}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.operation.type": "create",
            "messaging.operation.name": "enqueue",
            "messaging.destination.name": dependency,
        },
    ) as span:
        yield EnqueueSpan(span, _carrier())


def _link(trace_context: str | None) -> list[Link]:
    if not trace_context:
        return []
    try:
        carrier = json.loads(trace_context)
    except ValueError:
        return []
    if not isinstance(carrier, dict):
        return []
    ctx = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    return [Link(ctx)] if ctx.is_valid else []


class DispatchSpan:
    """A CONSUMER span (or nothing, untraced) that the outcome is written on."""

    __slots__ = ("span",)

    def __init__(self, span: trace.Span | None) -> None:
        self.span = span

    def ended(self, state_after: str, error: str | None = None) -> None:
        span = self.span
        if span is None:
            return
        span.set_attribute("seawall.outbox.state_after", state_after)
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, error))


_NO_SPAN = DispatchSpan(None)


@contextmanager
def _consumer_span(
    name: str, links: list[Link], attributes: dict[str, Any]
) -> Iterator[DispatchSpan]:
    """A CONSUMER span starting a new trace (the enqueue may be days old), current
    while the block runs; an exception escaping the block is recorded on it."""
    tracer = _tracer()
    if tracer is None:  # checked by the callers too; telemetry may be turned off meanwhile
        yield _NO_SPAN
        return
    span = tracer.start_span(
        name,
        context=otel_context.Context(),
        kind=SpanKind.CONSUMER,
        links=links,
        attributes=attributes,
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield DispatchSpan(span)
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        otel_context.detach(token)
        span.end()


def reconcile_span(dependency: str, links: list[str | None]) -> ContextManager[DispatchSpan]:
    """``seawall.outbox reconcile DEP``: one span per reconciler batch, linked to each
    entry's enqueue span."""
    if _tracer() is None:
        return nullcontext(_NO_SPAN)
    return _consumer_span(
        f"seawall.outbox reconcile {dependency}",
        [link for context in links for link in _link(context)],
        {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "reconcile",
            "messaging.destination.name": dependency,
            "messaging.batch.message_count": len(links),
        },
    )


def dispatch_span(
    operation: str, entry: Entry, now: float, trace_context: str | None
) -> ContextManager[DispatchSpan]:
    """``seawall.outbox OPERATION DEP``: a new trace, linked to the enqueue span."""
    if _tracer() is None:
        return nullcontext(_NO_SPAN)
    return _consumer_span(
        f"seawall.outbox {operation} {entry.dependency}",
        _link(trace_context),
        {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": operation,
            "messaging.destination.name": entry.dependency,
            "messaging.message.id": str(entry.id),
            "seawall.outbox.attempt": entry.attempts,
            "seawall.outbox.state_before": str(entry.state),
            "seawall.outbox.lag": max(0.0, now - entry.created_at),
        },
    )


# -- metrics ------------------------------------------------------------------------------


class _Instruments:
    def __init__(self, meter: metrics.Meter) -> None:
        self.dispatches = meter.create_counter(
            "seawall.outbox.dispatches",
            unit="{dispatch}",
            description="Outbox sends, verifications and compensations, by outcome.",
        )
        self.lag = meter.create_histogram(
            "seawall.outbox.lag",
            unit="s",
            description="Enqueue to succeeded.",
            explicit_bucket_boundaries_advisory=LAG_BUCKETS,
        )
        self.lease_lost = meter.create_counter(
            "seawall.outbox.lease_lost",
            unit="{write}",
            description="Result writes dropped: the lease had passed to another.",
        )
        self.attention = meter.create_counter(
            "seawall.outbox.attention",
            unit="{entry}",
            description="Entries flagged for a person.",
        )
        meter.create_observable_gauge(
            "seawall.outbox.entries",
            callbacks=[_observe_entries],
            unit="{entry}",
            description="Outbox entries by dependency and state (counted every 15 s).",
        )
        meter.create_observable_gauge(
            "seawall.outbox.oldest_age",
            callbacks=[_observe_oldest],
            unit="s",
            description="Age of the oldest entry by dependency and state (counted every 15 s).",
        )


_cached: tuple[object, _Instruments | None] | None = None


def instruments() -> _Instruments | None:
    """The instruments on seawall's meter provider; None when metrics are off.

    Built once per telemetry settings (``seawall.telemetry.configure`` makes new ones).
    """
    global _cached
    s = _otel.settings()
    if _cached is not None and _cached[0] is s:
        return _cached[1]
    found: _Instruments | None = None
    if s.enabled and (s.meter_provider is not None or meter_provider_set()):
        provider = s.meter_provider or metrics.get_meter_provider()
        found = _Instruments(provider.get_meter("seawall.outbox"))
    if found is not None or not s.enabled:
        _cached = (s, found)  # else a provider set later is found on the next call
    return found


#: Outboxes whose last counts the gauges report:
#: {outbox: (table, when, {(dependency, state): (count, oldest created_at)})}.
_counts: weakref.WeakKeyDictionary[
    object, tuple[str, float, Mapping[tuple[str, str], tuple[int, float | None]]]
] = weakref.WeakKeyDictionary()


def track_counts(
    outbox: object,
    table: str,
    now: float,
    counts: Mapping[tuple[str, str], tuple[int, float | None]],
) -> None:
    _counts[outbox] = (table, now, counts)
    instruments()  # the gauges exist once there is something to report


def counts_of(
    outbox: object,
) -> tuple[str, float, Mapping[tuple[str, str], tuple[int, float | None]]] | None:
    """The last counts a dispatcher made for *outbox* (table, when, counts), if any."""
    return _counts.get(outbox)


def _attributes(table: str, dependency: str, state: str) -> dict[str, str]:
    return {
        "seawall.dependency": dependency,
        "seawall.outbox.state": state,
        "seawall.outbox.table": table,
    }


def _observe_entries(options: CallbackOptions) -> Iterable[Observation]:
    for table, _, counts in list(_counts.values()):
        for (dependency, state), (n, _oldest) in counts.items():
            yield Observation(n, _attributes(table, dependency, state))


def _observe_oldest(options: CallbackOptions) -> Iterable[Observation]:
    for table, now, counts in list(_counts.values()):
        for (dependency, state), (_n, oldest) in counts.items():
            if oldest is not None:
                yield Observation(max(0.0, now - oldest), _attributes(table, dependency, state))


def dispatched(dependency: str, outcome: str) -> None:
    found = instruments()
    if found is not None:
        found.dispatches.add(1, {"seawall.dependency": dependency, "seawall.outcome": outcome})


def succeeded_after(dependency: str, lag: float) -> None:
    found = instruments()
    if found is not None:
        found.lag.record(max(0.0, lag), {"seawall.dependency": dependency})


def lease_lost(dependency: str, entry_id: int) -> None:
    found = instruments()
    if found is not None:
        found.lease_lost.add(1, {"seawall.dependency": dependency})
    _logger.warning(
        "seawall.outbox.lease_lost",
        dependency=dependency,
        entry_id=entry_id,
        hint="the result came after the lease passed to another dispatcher; it was dropped",
    )


# -- logs -----------------------------------------------------------------------------------


def transition(
    entry_id: int,
    dependency: str,
    before: str | None,
    after: str,
    *,
    claim: bool = False,
    **fields: Any,
) -> None:
    """``seawall.outbox.transition``: info, or debug for claims."""
    if not _otel.settings().enabled:
        return
    level = "debug" if claim else "info"
    getattr(_logger, level)(
        "seawall.outbox.transition",
        entry_id=entry_id,
        dependency=dependency,
        to_state=after,
        **{k: v for k, v in fields.items() if v is not None},
        **({} if before is None else {"from_state": before}),
    )


def attention(entry_id: int, dependency: str, reason: str) -> None:
    """``seawall.outbox.attention`` (warning): a person must look at this entry."""
    found = instruments()
    if found is not None:
        found.attention.add(1, {"seawall.dependency": dependency})
    _logger.warning(
        "seawall.outbox.attention", entry_id=entry_id, dependency=dependency, reason=reason
    )
