"""What shared state reports: in-process counters, OpenTelemetry metrics, log events.

Counters are plain dictionaries (read by snapshots, tests and the bench); the
OpenTelemetry instruments are built lazily on the meter provider seawall's
telemetry settings name, as the call metrics are:

* ``seawall.shared.state`` (gauge): 0 connected, 1 degraded, per replica;
* ``seawall.shared.sync.duration`` (histogram, s);
* ``seawall.shared.errors`` {op, reason}; ``seawall.shared.round_trips`` {op};
* ``seawall.shared.local_decisions`` {feature}: a decision taken on local
  state because Redis was degraded or slower than ``budget``.

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

if TYPE_CHECKING:
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
