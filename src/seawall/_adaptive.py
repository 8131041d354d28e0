"""Adaptive concurrency limits: a bulkhead size that follows the dependency's latency.

A dependency's capacity is the number of calls it serves at once without
queueing them (its workers, its connections). Below it, latency stays near
the round-trip time of the idle dependency; above it, every extra call waits
in the dependency's queue and latency grows with the queue (Little's law).
The algorithms here keep the calls in flight near that capacity: they
compare the latency of recent calls with the *minimum RTT*, the latency of
the idle dependency, grow the limit while latency stays within
``tolerance`` times the minimum, and shrink it when latency rises past that
or attempts time out.

Both algorithms share the bookkeeping, after Netflix's concurrency-limits
(``WindowedLimit``, ``Gradient2Limit``, ``AIMDLimit``) and Envoy's adaptive
concurrency filter:

- **Windows.** Samples are gathered into a window that closes after at least
  ``MIN_SAMPLES`` samples and twice the minimum RTT (within ``MIN_WINDOW``
  and ``MAX_WINDOW``); the limit moves once per window. A timed-out attempt
  closes its window at once: a timeout is the strongest sign of overload.
- **One statistic.** A window's latency is the *geometric mean* of its
  samples, and so is the minimum RTT: O(1) per sample (a sum of logarithms),
  robust to a few outliers, and equal to the median of a log-normal
  latency. A plain mean would sit above a probe's median at no load at all
  for any skewed latency, and shrink the limit of an idle dependency.
- **App-limited windows.** While fewer than half the limit's calls were in
  flight, the limit binds no one and the latency says nothing about it: it
  stays (Gradient2 does the same), except that a timeout still shrinks it.
  Without this, noise would only ever ratchet an idle dependency's limit down.
- **The minimum RTT** is measured by a *probe*, at the first call and then
  every ``probe_interval`` seconds (plus up to 10 % of jitter): the
  geometric mean of ``PROBE_SAMPLES`` calls that ran at low concurrency
  (admitted after the probe began, and ended with at most a quarter of the
  limit in flight, at least ``PROBE_FLOOR`` and ``min_limit``). A dependency
  used below that needs nothing more, and its limit never moves for it; a
  busy one gets no such call within ``PROBE_PATIENCE``, and then the limit
  is held at that quarter until enough calls admitted since have ended, as
  Envoy does. Measured afresh rather than kept as a running
  minimum, the estimate rises again after the dependency became slower for
  good (instead of holding the limit at its floor for ever), and a lucky
  fast window cannot drag it down.

The two updates, per window of latency ``rtt``:

- ``gradient``: ``gradient = clamp(tolerance * min_rtt / rtt, 0.5, tolerance)``
  (0.5 on a timeout); the target is ``limit * gradient``, plus a headroom of
  up to ``HEADROOM`` slots while latency is within tolerance (all of it at the
  minimum, none at the tolerance), and ``limit += smoothing * (target -
  limit)``. It settles where latency is ``tolerance`` times the minimum; the
  headroom lets a small limit grow by about a slot a window.
- ``aimd``: ``limit + 1`` while latency is within ``tolerance`` times the
  minimum, ``limit * 0.9`` past it, ``limit * 0.5`` on a timeout.

The limit is kept as a float and enforced rounded, within ``min_limit`` and
``max_limit``. Everything is pure and O(1) per sample: time is an argument,
the probe's jitter comes from an injected ``random``.
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Callable
from dataclasses import dataclass

from ._config import AdaptiveLimit

__all__ = [
    "MAX_WINDOW",
    "MIN_SAMPLES",
    "MIN_WINDOW",
    "PROBE_SAMPLES",
    "AdaptiveStatistics",
    "Controller",
]

#: Samples a window needs before it may close (a timeout closes it sooner).
MIN_SAMPLES = 8
#: A window lasts twice the minimum RTT, within these bounds (seconds).
MIN_WINDOW = 0.005
MAX_WINDOW = 1.0
#: Calls admitted during a probe whose latency becomes the minimum RTT.
PROBE_SAMPLES = 16
#: A probe waits this long (seconds; or 40 minimum RTTs if that is longer) for
#: quiet calls before it holds the limit low: long enough for a burst (a cold
#: start, clients coming back together) to pass.
PROBE_PATIENCE = 2.0
#: A probe holding the limit low ends after this long (seconds; or 20 minimum
#: RTTs if that is longer) with the samples it has.
PROBE_MAX = 1.0
#: A probe runs at a quarter of the limit, and at least this (and min_limit).
PROBE_FLOOR = 3
#: Share of probe_interval added at random to each interval, so that
#: replicas started together do not all probe at once.
PROBE_JITTER = 0.1
#: The least the gradient may be (a halving per window, before smoothing).
MIN_GRADIENT = 0.5
#: Gradient: slots added to the target at no load (Gradient2's queue size), fewer
#: as latency nears the tolerance, none at it.
HEADROOM = 4.0
#: AIMD: the factor applied past tolerance, and on a timeout.
AIMD_BACKOFF = 0.9
AIMD_TIMEOUT_BACKOFF = 0.5
#: Latencies are floored here (seconds) before their logarithm is taken: a
#: ManualClock that did not move reports 0.
MIN_RTT = 1e-6


@dataclass(frozen=True, slots=True)
class AdaptiveStatistics:
    """A snapshot of an adaptive limit (``BulkheadStatistics.adaptive``).

    ``min_rtt`` and ``rtt`` are in seconds, None until measured: the minimum
    RTT estimate, and the latency (geometric mean) of the last window.
    ``probing`` is true while the limit is held low to measure the minimum.
    """

    algorithm: str
    min_limit: int
    max_limit: int
    min_rtt: float | None
    rtt: float | None
    probing: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "algorithm": self.algorithm,
            "min_limit": self.min_limit,
            "max_limit": self.max_limit,
            "min_rtt": self.min_rtt,
            "rtt": self.rtt,
            "probing": self.probing,
        }


class Controller:
    """The state of one adaptive limit: :meth:`sample` feeds it, ``limit`` is read.

    ``limit`` is the number of calls to admit now, an int within
    ``min_limit..max_limit``; only :meth:`sample` changes it.
    """

    __slots__ = (
        "_clamped",
        "_estimate",
        "_next_probe",
        "_probe_count",
        "_probe_from",
        "_probe_logs",
        "_probe_start",
        "_quiet",
        "_random",
        "_w_count",
        "_w_inflight",
        "_w_logs",
        "_w_start",
        "_w_timeout",
        "algorithm",
        "interval",
        "last_rtt",
        "limit",
        "max_limit",
        "min_limit",
        "min_rtt",
        "smoothing",
        "tolerance",
    )

    def __init__(
        self,
        config: AdaptiveLimit,
        *,
        max_concurrent: int,
        now: float,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.algorithm = config.algorithm
        self.min_limit = config.min_limit
        self.max_limit = max_limit = (
            config.max_limit if config.max_limit is not None else max_concurrent
        )
        initial = config.initial
        if initial is None:
            initial = max(self.min_limit, min(max_limit, 20))
        self.smoothing = config.smoothing
        self.tolerance = config.tolerance
        self.interval = config.probe_interval
        self._random = random
        #: The limit before rounding; ``limit`` is what is enforced.
        self._estimate = float(initial)
        self.limit = initial
        self.min_rtt: float | None = None
        self.last_rtt: float | None = None
        self._w_start = now
        self._w_count = 0
        self._w_logs = 0.0
        self._w_inflight = 0
        self._w_timeout = False
        # The probe: when it began, since when its samples count (its start, or
        # the clamp), whether the limit is clamped, and the quiet concurrency.
        self._probe_start: float | None = None
        self._probe_from = now
        self._clamped = False
        self._quiet = 0
        self._probe_count = 0
        self._probe_logs = 0.0
        # No minimum is known yet: the first sample starts a probe.
        self._next_probe = now

    def sample(self, now: float, rtt: float, timed_out: bool, in_flight: int) -> int:
        """An attempt ended at *now* after *rtt* seconds; returns the limit to enforce.

        *in_flight* counts the attempts in flight when it ended, itself included.
        """
        if self._probe_start is None and now >= self._next_probe:
            self._start_probe(now)
        if self._probe_start is not None and self._probe(now, rtt, timed_out, in_flight):
            return self.limit
        self._w_count += 1
        self._w_logs += math.log(max(rtt, MIN_RTT))
        if in_flight > self._w_inflight:
            self._w_inflight = in_flight
        if timed_out:
            self._w_timeout = True
        elif self._w_count < MIN_SAMPLES or now - self._w_start < self._window_length():
            return self.limit
        return self._close_window(now)

    def statistics(self) -> AdaptiveStatistics:
        return AdaptiveStatistics(
            algorithm=self.algorithm,
            min_limit=self.min_limit,
            max_limit=self.max_limit,
            min_rtt=self.min_rtt,
            rtt=self.last_rtt,
            probing=self._probe_start is not None,
        )

    # -- windows ---------------------------------------------------------------------------

    def _window_length(self) -> float:
        min_rtt = self.min_rtt
        assert min_rtt is not None  # windows run once a probe measured it
        return min(MAX_WINDOW, max(MIN_WINDOW, 2.0 * min_rtt))

    def _reset_window(self, now: float) -> None:
        self._w_start = now
        self._w_count = 0
        self._w_logs = 0.0
        self._w_inflight = 0
        self._w_timeout = False

    def _close_window(self, now: float) -> int:
        rtt = self.last_rtt = math.exp(self._w_logs / self._w_count)
        timed_out = self._w_timeout
        app_limited = self._w_inflight * 2 < self._estimate
        self._reset_window(now)
        if timed_out:
            return self._set(self._after_timeout(self._estimate))
        if app_limited:
            # Fewer than half the limit in flight: the latency says nothing of the
            # limit, which binds no one (Gradient2 leaves it alone too).
            return self.limit
        min_rtt = self.min_rtt
        assert min_rtt is not None
        estimate = self._estimate
        tolerance = self.tolerance
        if self.algorithm == "gradient":
            gradient = min(tolerance, max(MIN_GRADIENT, tolerance * min_rtt / rtt))
            target = estimate * gradient
            if gradient > 1.0:
                # Headroom that vanishes at the tolerance: a low limit grows by
                # about a slot a window, and the limit still settles where the
                # latency is tolerance times the minimum.
                target += HEADROOM * (gradient - 1.0) / (tolerance - 1.0)
            estimate += self.smoothing * (target - estimate)
        elif rtt > tolerance * min_rtt:
            estimate *= AIMD_BACKOFF
        else:
            estimate += 1.0
        return self._set(estimate)

    def _after_timeout(self, estimate: float) -> float:
        if self.algorithm == "gradient":
            return estimate + self.smoothing * (estimate * MIN_GRADIENT - estimate)
        return estimate * AIMD_TIMEOUT_BACKOFF

    def _set(self, estimate: float) -> int:
        estimate = min(float(self.max_limit), max(float(self.min_limit), estimate))
        self._estimate = estimate
        self.limit = int(estimate + 0.5)
        return self.limit

    # -- probes: measuring the minimum RTT afresh ---------------------------------------------

    def _start_probe(self, now: float) -> None:
        self._probe_start = self._probe_from = now
        self._clamped = False
        self._probe_count = 0
        self._probe_logs = 0.0
        quarter = int(self._estimate) // 4
        self._quiet = max(self.min_limit, min(self.limit, max(PROBE_FLOOR, quarter)))

    def _probe(self, now: float, rtt: float, timed_out: bool, in_flight: int) -> bool:
        """Feed the probe; True when the limit is the probe's (the window must wait)."""
        if timed_out:
            if self._clamped or self.min_rtt is None:
                # No window runs: the limit to come back to learns it here.
                self._estimate = max(float(self.min_limit), self._after_timeout(self._estimate))
                if not self._clamped:
                    self._set(self._estimate)
        elif now - rtt >= self._probe_from and in_flight <= self._quiet:
            # Admitted since the probe (or its clamp) began, and ended with few in
            # flight: a call that ran at low concurrency.
            self._probe_count += 1
            self._probe_logs += math.log(max(rtt, MIN_RTT))
        count = self._probe_count
        min_rtt = self.min_rtt or 0.0
        if self._clamped:
            overdue = now - self._probe_from >= max(PROBE_MAX, 20.0 * min_rtt)
        else:
            overdue = now - self._probe_from >= max(PROBE_PATIENCE, 40.0 * min_rtt)
        if count >= PROBE_SAMPLES or (self._clamped and overdue and count):
            self.min_rtt = math.exp(self._probe_logs / count)
            return self._end_probe(now)
        if not overdue:
            return self._clamped or self.min_rtt is None
        if not self._clamped:
            # Too few quiet calls came by themselves: hold the limit low for some.
            self._clamped = True
            self._probe_from = now
            self._probe_count = 0
            self._probe_logs = 0.0
            self.limit = min(self.limit, self._quiet)
            return True
        if self.min_rtt is None:
            self._probe_from = now  # nothing measured yet: go on probing
            return True
        return self._end_probe(now)  # nothing measured: keep the old minimum

    def _end_probe(self, now: float) -> bool:
        self._probe_start = None
        self._clamped = False
        self._next_probe = now + self.interval * (1.0 + PROBE_JITTER * self._random())
        self._reset_window(now)
        self._set(self._estimate)
        return True
