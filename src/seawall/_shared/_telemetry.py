"""What shared state reports: in-process counters, OpenTelemetry metrics, log events.

Counters are plain dictionaries (read by snapshots, tests and the bench); the
OpenTelemetry instruments are built lazily on the meter provider seawall's
telemetry settings name, as the call metrics are:

* ``seawall.shared.state`` (gauge): 0 connected, 1 degraded, per replica;
* ``seawall.shared.sync.duration`` (histogram, s);
* ``seawall.shared.errors`` {op, reason}; ``seawall.shared.round_trips`` {op};
* ``seawall.shared.local_decisions`` {feature}: a decision taken on local
  state because Redis was degraded or slower than ``budget``;
* per shared dependency, as this replica saw them at its last sync (gauges,
  {seawall.dependency}): ``seawall.shared.verdict`` (1 open, 0 closed; an
  advisory breaker), ``seawall.shared.replicas`` {seawall.shared.role: live,
  tripped, evidence}, ``seawall.shared.bulkhead.slots`` {seawall.shared.scope:
  replica (held here), cluster (held by all), limit (the global cap)}.

Log events (structlog, once per transition): ``seawall.shared.degraded``
(warning) and ``seawall.shared.recovered`` (info). No URL, password or key
appears in any of them: only the replica id, the namespace and error class names.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation

from .._compat import meter_provider_set
from ..telemetry import _otel
from ..telemetry._redact import mask_url

if TYPE_CHECKING:
    from .._runtime import Runtime
    from ._state import SharedState

__all__ = ["Counters", "logger", "metrics_for", "wait_event"]

logger = structlog.get_logger("seawall")

_states: weakref.WeakSet[SharedState] = weakref.WeakSet()


class Counters:
    """The in-process figures of one state backend."""

    __slots__ = ("errors", "local_decisions", "round_trips")

    def __init__(self) -> None:
        self.round_trips: Counter[str] = Counter()
        self.errors: Counter[tuple[str, str]] = Counter()
        self.local_decisions: Counter[str] = Counter()

    def as_dict(self) -> dict[str, Any]:
        return {
            "round_trips": dict(self.round_trips),
            "errors": {f"{op}:{reason}": n for (op, reason), n in self.errors.items()},
            "local_decisions": dict(self.local_decisions),
        }


class _Instruments:
    __slots__ = ("errors", "local_decisions", "round_trips", "settings", "sync_duration")

    def __init__(self, settings: object, meter: metrics.Meter) -> None:
        self.settings = settings
        self.sync_duration = meter.create_histogram(
            "seawall.shared.sync.duration",
            unit="s",
            description="Duration of one shared-state sync (one script call).",
            explicit_bucket_boundaries_advisory=_otel.DURATION_BUCKETS,
        )
        self.errors = meter.create_counter(
            "seawall.shared.errors",
            unit="{error}",
            description="Shared-state operations that failed, by op and reason.",
        )
        self.round_trips = meter.create_counter(
            "seawall.shared.round_trips",
            unit="{round_trip}",
            description="Round trips to the shared-state backend, by op.",
        )
        self.local_decisions = meter.create_counter(
            "seawall.shared.local_decisions",
            unit="{decision}",
            description="Decisions taken on local state (backend degraded or slower than budget).",
        )
        meter.create_observable_gauge(
            "seawall.shared.state",
            callbacks=[_observe_state],
            description="Shared state: 0 connected, 1 degraded.",
        )
        meter.create_observable_gauge(
            "seawall.shared.verdict",
            callbacks=[_observe_verdicts],
            description="The replicas' shared breaker verdict: 1 open, 0 closed.",
        )
        meter.create_observable_gauge(
            "seawall.shared.replicas",
            callbacks=[_observe_replicas],
            unit="{replica}",
            description="Replicas of a shared dependency: live, tripped, holding evidence.",
        )
        meter.create_observable_gauge(
            "seawall.shared.bulkhead.slots",
            callbacks=[_observe_slots],
            unit="{slot}",
            description="Global bulkhead slots: held by this replica, by all, and the cap.",
        )


_instruments: _Instruments | None = None


def metrics_for(state: SharedState) -> _Instruments | None:
    """The instruments, if a meter provider is set and telemetry is on (None otherwise)."""
    global _instruments
    _states.add(state)
    settings = _otel.settings()
    if not settings.enabled:
        return None
    if _instruments is not None and _instruments.settings is settings:
        return _instruments
    if settings.meter_provider is None and not meter_provider_set():
        return None
    provider = settings.meter_provider or metrics.get_meter_provider()
    _instruments = _Instruments(settings, provider.get_meter("seawall.shared"))
    return _instruments


def _observe_state(options: CallbackOptions) -> Iterable[Observation]:
    for state in list(_states):
        if state.status != "stopped":
            yield Observation(
                0 if state.connected else 1,
                {"seawall.replica": state.replica, "seawall.namespace": state.namespace},
            )


def _shared_runtimes() -> Iterable[tuple[SharedState, Runtime]]:
    for state in list(_states):
        if state.status == "stopped":
            continue
        for rt in state.runtimes():
            yield state, rt


def _observe_verdicts(options: CallbackOptions) -> Iterable[Observation]:
    from ._breaker import AdvisoryBreaker

    for _state, rt in _shared_runtimes():
        breakers = [rt.breaker] if rt.breaker is not None else rt.endpoint_breakers.values()
        for breaker in breakers:
            if isinstance(breaker, AdvisoryBreaker):
                attrs = {"seawall.dependency": rt.name}
                if breaker.endpoint is not None:
                    attrs["seawall.endpoint"] = mask_url(breaker.endpoint)
                yield Observation(1 if breaker.shared_snapshot()["verdict"] == "open" else 0, attrs)


def _observe_replicas(options: CallbackOptions) -> Iterable[Observation]:
    for state, rt in _shared_runtimes():
        view = state.view(rt.name)
        for role, n in (
            ("live", view.live),
            ("tripped", view.tripped),
            ("evidence", view.evidence),
        ):
            yield Observation(n, {"seawall.dependency": rt.name, "seawall.shared.role": role})


def _observe_slots(options: CallbackOptions) -> Iterable[Observation]:
    from ._bulkhead import SharedBulkhead

    for state, rt in _shared_runtimes():
        bulkhead = rt.bulkhead
        if not isinstance(bulkhead, SharedBulkhead):
            continue
        for scope, n in (
            ("replica", bulkhead.held),
            ("cluster", state.view(rt.name).slots),
            ("limit", bulkhead.global_config.max_concurrent),
        ):
            yield Observation(n, {"seawall.dependency": rt.name, "seawall.shared.scope": scope})


def wait_event(feature: str, dependency: str, outcome: str, waited: float) -> None:
    """The span event of a hot-path wait on the backend (``seawall.shared.wait``)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(
            "seawall.shared.wait",
            {
                "seawall.dependency": dependency,
                "seawall.shared.feature": feature,
                "seawall.shared.outcome": outcome,
                "seawall.shared.waited": waited,
            },
        )
