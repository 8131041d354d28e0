"""The advisory breaker: a local breaker that also follows the replicas' verdict.

It is a :class:`~seawall.Breaker` in every way (the engine, listeners and
telemetry see no difference, and a call costs nothing more); the sync task
hands it the aggregates of the live replicas after each sync.

* **The shared verdict** is open when at least ``quorum`` live replicas are
  tripped (open, or over their failure or slow-call threshold) and they make
  up at least ``quorum_ratio`` of the replicas with evidence (``minimum_calls``
  in their window, or open). A replica that opened only because it followed
  the verdict counts as neither: a verdict cannot keep itself alive.
* **Local evidence wins.** A CLOSED breaker adopts an open verdict only while
  its own evidence is thin: fewer than ``minimum_calls`` in its window, or a
  failure rate of at least ``assist_ratio`` times the threshold. It opens with
  reason ``"shared"`` (``cause`` says ``"shared"`` until it closes).
* **Recovery is local.** Half-open probes decide as usual; once they close the
  breaker, it ignores the verdict until its window holds ``minimum_calls``
  again, so it does not flap.
* **Cluster-wide control.** ``force_open``, ``force_closed``, ``disable`` and
  ``reset`` take ``scope="cluster"`` (and ``ttl``): the change applies here at
  once and on every replica at its next sync. ``forced_open`` and ``disabled``
  hold until their ``ttl`` ends or another cluster change replaces them.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Any, Literal

from .._breaker import CLOSED, DISABLED, FORCED_OPEN, HALF_OPEN, OPEN, Breaker, BreakerState
from .._clock import Clock
from .._config import CircuitBreaker, Shared
from ._state import DependencyView

if TYPE_CHECKING:
    from ._state import SharedState

__all__ = ["AdvisoryBreaker", "endpoint_key"]

Scope = Literal["local", "cluster"]
_PERSISTENT = frozenset({"forced_open", "disabled"})
_RESETS_VERDICT = frozenset({"probes_passed", "forced_closed", "reset", "override_ended"})


def endpoint_key(dependency: str, endpoint: str) -> str:
    """The sync's name for one endpoint of a dependency: ``name\0<sha256 of the URL, 16
    hex digits>`` (a NUL: no dependency name has one)."""
    return f"{dependency}\0{hashlib.sha256(endpoint.encode()).hexdigest()[:16]}"


class AdvisoryBreaker(Breaker):
    """A breaker that also follows the shared verdict of the replicas (``Shared(breaker="advisory")``)."""

    __slots__ = (
        "_applying",
        "_backend",
        "_cause",
        "_ignoring",
        "_override",
        "_override_id",
        "_view",
        "shared",
        "sync_key",
    )

    def __init__(
        self,
        config: CircuitBreaker,
        *,
        clock: Clock,
        dependency: str,
        shared: Shared,
        state: SharedState,
        endpoint: str | None = None,
    ) -> None:
        super().__init__(config, clock=clock, dependency=dependency, endpoint=endpoint)
        self.shared = shared
        #: What the sync calls this breaker: the dependency's name, or for an
        #: endpoint's breaker the name and a digest of the URL (never the URL,
        #: which may hold a password), joined by a NUL no name can contain.
        self.sync_key = dependency if endpoint is None else endpoint_key(dependency, endpoint)
        self._backend = state
        self._cause: str | None = None
        self._ignoring = False
        self._override: str | None = None
        self._override_id: int | None = None
        self._applying: str | None = None
        self._view: DependencyView | None = None

    # -- reading -------------------------------------------------------------------

    @property
    def cause(self) -> str | None:
        """Why the breaker is not closed: ``"local"`` (its own calls), ``"shared"`` (the
        replicas' verdict), ``"override"`` (a cluster-wide change) or ``"manual"``."""
        return self._cause

    def verdict(self, view: DependencyView | None = None) -> bool:
        """Whether the replicas' verdict (the last synced one, by default) is open."""
        view = view if view is not None else self._view
        if view is None:
            return False
        shared = self.shared
        return view.tripped >= shared.quorum and view.tripped >= shared.quorum_ratio * view.evidence

    def evidence(self) -> tuple[int, int]:
        """(tripped, holds evidence) of this replica, as a sync reports them."""
        state = self._state
        if state is OPEN or state is HALF_OPEN:
            return (1, 1) if self._cause == "local" else (0, 0)
        if state is not CLOSED:
            return 0, 0
        calls, failures, slow = self._window.totals(self._clock.now())
        cfg = self.config
        if calls < cfg.minimum_calls:
            return 0, 0
        over = (
            failures / calls >= cfg.failure_rate_threshold
            or slow / calls >= cfg.slow_call_rate_threshold
        )
        return int(over), 1

    def shared_snapshot(self) -> dict[str, Any]:
        view = self._view or DependencyView()
        return {
            "verdict": "open" if self.verdict(view) else "closed",
            "live_replicas": view.live,
            "tripped_replicas": view.tripped,
            "evidence_replicas": view.evidence,
            "override": view.override if view.override in _PERSISTENT else None,
            "override_left": view.override_left if view.override in _PERSISTENT else None,
            "cause": self._cause,
        }

    # -- following the replicas (the sync task) ----------------------------------------

    def follow(self, view: DependencyView, *, own: bool = False) -> None:
        """Act on the aggregates of a sync: a cluster override first, then the verdict."""
        self._view = view
        self._follow_override(view, own)
        if self._state is not CLOSED:
            return
        cfg = self.config
        calls, failures, _ = self._window.totals(self._clock.now())
        if self._ignoring:
            if calls < cfg.minimum_calls:
                return
            self._ignoring = False
        if not self.verdict(view):
            return
        thin = (
            calls < cfg.minimum_calls
            or failures >= self.shared.assist_ratio * cfg.failure_rate_threshold * calls
        )
        if thin:
            self._open("shared")

    def _follow_override(self, view: DependencyView, own: bool) -> None:
        first = self._override_id is None
        if view.override_id and view.override_id != self._override_id:
            self._override_id = view.override_id
            mode = view.override
            if own or (first and mode not in _PERSISTENT):
                # Ours (applied when asked), or a one-shot from before we joined.
                self._override = mode if mode in _PERSISTENT else None
                return
            self._apply(mode)
            return
        if first:
            self._override_id = 0
        if self._override is not None and view.override != self._override:
            # The persistent override ended (its ttl, or cleared): back to closed.
            self._override = None
            if self._cause == "override" and self._state in (FORCED_OPEN, DISABLED):
                self._settle()
                self._transition(CLOSED, "override_ended")

    def _apply(self, mode: str | None) -> None:
        actions = {
            "forced_open": Breaker.force_open,
            "disabled": Breaker.disable,
            "forced_closed": Breaker.force_closed,
            "reset": Breaker.reset,
        }
        action = actions.get(mode or "")
        if action is None:
            return
        self._applying = "override"
        try:
            action(self)
        finally:
            self._applying = None
        self._override = mode if mode in _PERSISTENT else None

    # -- manual control, here or everywhere ----------------------------------------------

    def force_open(self, *, scope: Scope = "local", ttl: float | None = None) -> None:
        """Reject every call; ``scope="cluster"`` on every replica (until ``ttl`` ends)."""
        self._manual("forced_open", scope, ttl, super().force_open)

    def force_closed(self, *, scope: Scope = "local", ttl: float | None = None) -> None:
        """Go to CLOSED with an empty window; ``scope="cluster"`` on every replica."""
        self._manual("forced_closed", scope, ttl, super().force_closed)

    def disable(self, *, scope: Scope = "local", ttl: float | None = None) -> None:
        """Admit every call and record nothing; ``scope="cluster"`` on every replica."""
        self._manual("disabled", scope, ttl, super().disable)

    def reset(self, *, scope: Scope = "local", ttl: float | None = None) -> None:
        """Like ``force_closed()``, and forget consecutive openings; ``scope="cluster"``
        on every replica."""
        self._manual("reset", scope, ttl, super().reset)

    def _manual(self, mode: str, scope: str, ttl: float | None, action: Any) -> None:
        if scope not in ("local", "cluster"):
            raise ValueError(f"scope: must be 'local' or 'cluster', got {scope!r}")
        if ttl is not None and (
            scope != "cluster"
            or isinstance(ttl, bool)
            or not isinstance(ttl, int | float)
            or not math.isfinite(ttl)
            or not 0 < ttl <= 1e9
        ):
            raise ValueError(
                f"ttl: must be a positive number of seconds, with scope='cluster', got {ttl!r}"
            )
        cluster = scope == "cluster"
        if cluster:
            self._backend.request_override(self.sync_key, mode, ttl)
        self._applying = "override" if cluster else "manual"
        try:
            action()
        finally:
            self._applying = None
        # A manual change here holds until the next cluster-wide one.
        self._override = mode if cluster and mode in _PERSISTENT else None

    # -- internals -----------------------------------------------------------------

    def _transition(self, to: BreakerState, reason: str) -> None:
        if to is OPEN:
            self._cause = "shared" if reason == "shared" else "local"
        elif to is CLOSED:
            self._cause = None
            self._ignoring = reason in _RESETS_VERDICT
        elif to is FORCED_OPEN or to is DISABLED:
            self._cause = self._applying or "manual"
        super()._transition(to, reason)
