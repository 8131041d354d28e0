"""Frozen, validated settings: what a dependency's protection looks like.

The config objects hold no state. Runtime state (breaker windows, permits,
tokens, budgets, cached responses) lives in per-dependency runtime objects
owned by whatever serves the dependency (a Registry, a ResilientClient, the
guard's registry), built from these settings.

Every value is validated on construction; an invalid one raises
:class:`~seawall.ConfigError` listing every problem at once, one line each,
``key.path: what is wrong, got VALUE``. ``None`` means "disabled" wherever a
part is optional.

Ranges are bounded both ways (docs/configuration.md lists them): a duration is
finite and at most ``MAX_SECONDS``, a time window at least ``MIN_WINDOW``, a
count at most ``MAX_COUNT``, so that no value accepted here can overflow,
exhaust memory or yield an infinite wait at run time.

No secret is printed: the VALUE of a header, cookie, auth or query-parameter
table is shown as ``[secret]``, URL passwords as ``[secure]`` (as httpx shows
them), and so are the ``repr()``s of :class:`DependencySpec` and
:class:`Config`.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from os import PathLike
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from ._exceptions import ConfigError

if TYPE_CHECKING:
    import httpx

    from .outbox._route import OutboxRoute

__all__ = [
    "AdaptiveLimit",
    "Backoff",
    "Bulkhead",
    "CircuitBreaker",
    "Config",
    "DependencySpec",
    "Fallback",
    "GlobalBulkhead",
    "Hedge",
    "Policy",
    "Pool",
    "RateLimit",
    "Retry",
    "RetryBudget",
    "Shared",
    "SharedRateLimit",
    "StateSettings",
    "Timeouts",
    "load_config",
]

#: Which exceptions a rule applies to: exception types, or a predicate.
ErrorMatcher: TypeAlias = "tuple[type[Exception], ...] | Callable[[Exception], bool]"
#: A fallback's static answer, or ``(request, error) -> response``.
DefaultResponse: TypeAlias = (
    "httpx.Response | Callable[[httpx.Request, BaseException], httpx.Response]"
)

# (key relative to the object, what is wrong, the value)
_Problem = tuple[str, str, object]

DEFAULT_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
DEFAULT_FAILURE_STATUSES = frozenset(range(500, 600))

#: The longest duration any setting may hold, in seconds (about 31 years): far
#: past any real timeout, far below where float arithmetic on a clock overflows.
MAX_SECONDS = 1e9
#: The shortest time window (breaker time window, retry budget window, rate
#: limit period), in seconds: a window is cut into intervals, and an interval
#: of a few femtoseconds makes ``clock.now() / width`` overflow on every call.
MIN_WINDOW = 0.001
#: The largest count (calls, slots, connections, entries, attempts): a count
#: window holds one byte per call.
MAX_COUNT = 1_000_000
#: The largest rate (calls per period) and burst.
MAX_RATE = 1e9
#: The largest growth factor (backoff multiplier, open duration multiplier).
MAX_MULTIPLIER = 1e6
#: The largest fallback cache, in bytes (1 TiB).
MAX_BYTES = 2**40

#: What a ConfigError shows in place of a secret value.
SECRET = "[secret]"
# Key names whose values are never printed (header, cookie and auth tables,
# query parameters, passwords, tokens), however they are spelled or misspelled.
_SECRET_WORDS = (
    "header",
    "cookie",
    "auth",
    "passw",
    "secret",
    "token",
    "credential",
    "api-key",
    "api_key",
    "apikey",
    "param",
    "session",
    "cert",
)
# httpx options of a dependency table whose values are secrets.
_SECRET_OPTIONS = frozenset({"headers", "cookies", "auth", "params"})
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# How much of a value a problem line shows.
_SHOWN_CHARS = 200


class _Secret:
    """Stands for a hidden value inside a printed table."""

    __slots__ = ()

    def __repr__(self) -> str:
        return SECRET


_HIDDEN = _Secret()


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and any(word in key.lower() for word in _SECRET_WORDS)


def _printable(value: object) -> object:
    """*value* with URL passwords masked and the values of secret-named keys hidden."""
    if isinstance(value, str):
        from .telemetry._redact import mask_url  # local: keep this module light

        return mask_url(value)
    if isinstance(value, Mapping):
        return {k: _HIDDEN if _is_secret_key(k) else _printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [_printable(v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    return value


def _shown(value: object) -> str:
    """The VALUE of a problem line: a repr with no secret in it, cut short, and never an error."""
    try:
        text = repr(_printable(value))
    except Exception:  # an int of 4300+ digits, a table nested past the recursion limit
        if isinstance(value, int):
            return f"<an integer of {value.bit_length()} bits>"
        return f"<unprintable {type(value).__name__}>"
    if len(text) > _SHOWN_CHARS:
        return f"{text[:_SHOWN_CHARS]}... ({len(text)} characters)"
    return text


def _line(path: str, message: str, value: object, *, secret: bool = False) -> str:
    """One problem line; a *secret* value is shown as ``[secret]``."""
    return f"{path}: {message}, got {SECRET if secret else _shown(value)}"


def _key(name: object) -> str:
    """A table name as a key-path segment: quoted (TOML style) unless it is a bare key."""
    if isinstance(name, str) and _BARE_KEY.fullmatch(name):
        return name
    return json.dumps(name) if isinstance(name, str) else _shown(name)


def _fmt(prefix: str, problem: _Problem) -> str:
    key, message, value = problem
    return _line(f"{prefix}{key}", message, value)


def _num(x: float) -> str:
    """A bound as people write it: ``1_000_000_000``, ``0.001``."""
    return f"{int(x):_}" if float(x).is_integer() else repr(x)


def _raise_if(cls_name: str, problems: list[_Problem]) -> None:
    if problems:
        error = ConfigError([_fmt(f"{cls_name}.", p) for p in problems])
        error._raw = problems
        raise error


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    """A finite int or float (math.isfinite overflows on an int past ~1e308)."""
    if not _is_number(value):
        return False
    return isinstance(value, int) or math.isfinite(value)  # type: ignore[arg-type]


def _seconds(
    out: list[_Problem],
    key: str,
    value: object,
    *,
    optional: bool = True,
    zero_ok: bool = False,
    unit: str = " of seconds",
    minimum: float | None = None,
    maximum: float = MAX_SECONDS,
) -> None:
    """A duration: a finite number of seconds, positive (or >= 0 with zero_ok), or None.

    It is at most *maximum* and, if given, at least *minimum*. ``unit=""``
    checks a plain positive number the same way (a rate, a count of calls).
    """
    if value is None and optional:
        return
    if not _is_finite(value):
        out.append(
            (key, f"must be a finite number{unit}" + (" or None" if optional else ""), value)
        )
    elif zero_ok and value < 0:  # type: ignore[operator]
        out.append((key, "must be >= 0", value))
    elif not zero_ok and value <= 0:  # type: ignore[operator]
        out.append((key, "must be > 0", value))
    elif minimum is not None and value < minimum:  # type: ignore[operator]
        out.append((key, f"must be >= {_num(minimum)}", value))
    elif value > maximum:  # type: ignore[operator]
        out.append((key, f"must be <= {_num(maximum)}", value))


def _integer(
    out: list[_Problem], key: str, value: object, *, minimum: int, maximum: int = MAX_COUNT
) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        out.append((key, "must be an integer", value))
    elif value < minimum:
        out.append((key, f"must be >= {minimum}", value))
    elif value > maximum:
        out.append((key, f"must be <= {_num(maximum)}", value))


def _multiplier(out: list[_Problem], key: str, value: object) -> None:
    if not _is_finite(value):
        out.append((key, "must be a finite number", value))
    elif value < 1:  # type: ignore[operator]
        out.append((key, "must be >= 1", value))
    elif value > MAX_MULTIPLIER:  # type: ignore[operator]
        out.append((key, f"must be <= {_num(MAX_MULTIPLIER)}", value))


def _fraction(out: list[_Problem], key: str, value: object, *, zero_ok: bool = False) -> None:
    if not _is_finite(value):
        out.append((key, "must be a finite number", value))
    elif not ((value >= 0 if zero_ok else value > 0) and value <= 1):  # type: ignore[operator]
        out.append((key, "must be in [0, 1]" if zero_ok else "must be in (0, 1]", value))


def _matcher(out: list[_Problem], key: str, value: object) -> None:
    if callable(value) and not isinstance(value, type):
        return
    if isinstance(value, tuple) and all(
        isinstance(t, type) and issubclass(t, Exception) for t in value
    ):
        return
    # BaseException subclasses (cancellation, KeyboardInterrupt) are refused on
    # purpose: seawall never retries or records cancellation.
    out.append((key, "must be a tuple of Exception subclasses or a predicate", value))


def _statuses(
    out: list[_Problem], key: str, value: object, given: object, *, lo: int, hi: int
) -> None:
    """Check the normalised set *value*; report the value as *given* (a list from a file)."""
    if not isinstance(value, frozenset) or not all(
        isinstance(s, int) and not isinstance(s, bool) and lo <= s <= hi for s in value
    ):
        out.append((key, f"must be a set of status codes in {lo}..{hi}", given))


def _status_set(value: object) -> object:
    """Normalise an iterable of status codes to a frozenset (left as is if it is not one)."""
    if isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping):
        try:
            return frozenset(value)
        except TypeError:
            return value
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """How long each phase of a call may take, in seconds (``None``: no limit).

    ``connect``, ``read``, ``write`` and ``pool`` map onto httpx's timeouts of
    the same names; mind that httpx's ``read`` bounds each socket read, not the
    whole response. ``attempt`` caps one attempt end to end (body included);
    ``total`` caps the whole call, every retry and backoff included, and is
    capped in turn by the ambient deadline (:func:`seawall.deadline`).
    The defaults follow Microsoft.Extensions.Http.Resilience's standard handler.
    """

    connect: float | None = 5.0
    read: float | None = 10.0
    write: float | None = 10.0
    pool: float | None = 5.0
    attempt: float | None = 10.0
    total: float | None = 30.0

    def __post_init__(self) -> None:
        problems: list[_Problem] = []
        for f in ("connect", "read", "write", "pool", "attempt", "total"):
            _seconds(problems, f, getattr(self, f))
        _raise_if("Timeouts", problems)


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Exponential backoff between attempts: ``initial * multiplier**n`` capped at ``maximum``.

    With ``jitter`` (the default) each wait is drawn uniformly from zero to that
    value ("full jitter"), which spreads the retries of many clients apart.
    """

    initial: float = 0.1
    maximum: float = 10.0
    multiplier: float = 2.0
    jitter: bool = True

    def __post_init__(self) -> None:
        problems: list[_Problem] = []
        _seconds(problems, "initial", self.initial, optional=False, zero_ok=True)
        _seconds(problems, "maximum", self.maximum, optional=False, zero_ok=True)
        if not problems and self.maximum < self.initial:
            problems.append(("maximum", f"must be >= initial ({self.initial})", self.maximum))
        _multiplier(problems, "multiplier", self.multiplier)
        if not isinstance(self.jitter, bool):
            problems.append(("jitter", "must be a boolean", self.jitter))
        _raise_if("Backoff", problems)

    def delay(self, retry: int, random: Callable[[], float]) -> float:
        """The wait before retry number *retry* (1 for the first retry)."""
        try:
            cap = min(self.initial * float(self.multiplier) ** (retry - 1), self.maximum)
        except OverflowError:  # a huge multiplier or retry count: past any maximum
            cap = self.maximum
        return cap * random() if self.jitter else cap


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudget:
    """Retries allowed as a share of recent calls (Finagle's and Envoy's retry budget).

    Over the last ``window`` seconds, retries may number at most
    ``ratio * calls + min_per_second * window``: a dependency that fails for
    everyone is not hammered by a retry storm, while a quiet one may still
    retry ``min_per_second`` times a second.
    """

    ratio: float = 0.2
    min_per_second: float = 10.0
    window: float = 10.0

    def __post_init__(self) -> None:
        problems: list[_Problem] = []
        if not _is_finite(self.ratio):
            problems.append(("ratio", "must be a finite number", self.ratio))
        elif not 0 <= self.ratio <= 10:
            problems.append(("ratio", "must be in [0, 10]", self.ratio))
        _seconds(
            problems,
            "min_per_second",
            self.min_per_second,
            optional=False,
            zero_ok=True,
            unit="",
            maximum=MAX_RATE,
        )
        _seconds(problems, "window", self.window, optional=False, minimum=MIN_WINDOW)
        _raise_if("RetryBudget", problems)


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """When and how often to try again.

    ``attempts`` counts the first call. The generic guard retries the errors
    matched by ``retry_on``; the HTTP client classifies failures itself (only
    where a retry is safe) and retries ``retry_statuses``. Cancellation and
    seawall's own rejections are never retried, and retrying never outlives the
    total deadline. A ``Retry-After`` longer than ``max_retry_after`` (or than
    the time left) ends retrying at once.
    """

    attempts: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    budget: RetryBudget | None = field(default_factory=RetryBudget)
    retry_on: ErrorMatcher = (TimeoutError, ConnectionError)
    retry_statuses: frozenset[int] = DEFAULT_RETRY_STATUSES
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        given = self.retry_statuses
        object.__setattr__(self, "retry_statuses", _status_set(given))
        problems: list[_Problem] = []
        _integer(problems, "attempts", self.attempts, minimum=1)
        if not isinstance(self.backoff, Backoff):
            problems.append(("backoff", "must be a Backoff", self.backoff))
        if self.budget is not None and not isinstance(self.budget, RetryBudget):
            problems.append(("budget", "must be a RetryBudget or None", self.budget))
        _matcher(problems, "retry_on", self.retry_on)
        _statuses(problems, "retry_statuses", self.retry_statuses, given, lo=400, hi=599)
        _seconds(problems, "max_retry_after", self.max_retry_after, optional=False, zero_ok=True)
        _raise_if("Retry", problems)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptiveLimit:
    """A bulkhead limit that follows the dependency's latency (``Bulkhead.adaptive``).

    The limit grows while latency stays within ``tolerance`` times the
    minimum round-trip time seen, and shrinks when latency rises past it or
    attempts time out; it stays within ``min_limit`` and ``max_limit``
    (default: the bulkhead's ``max_concurrent``) and starts at ``initial``
    (default: ``min(max_limit, 20)``). ``algorithm="gradient"`` moves the limit
    by the ratio of the two latencies, ``smoothing`` of the way at each update
    (Netflix's Gradient2, Envoy's adaptive concurrency); ``"aimd"`` adds one
    slot per update and takes off a tenth (half on a timeout). Every
    ``probe_interval`` seconds the limit drops for a few calls to measure the
    minimum again, as Envoy does, so that it recovers after a slow period.
    """

    algorithm: Literal["gradient", "aimd"] = "gradient"
    min_limit: int = 1
    max_limit: int | None = None
    initial: int | None = None
    smoothing: float = 0.2
    tolerance: float = 1.25
    probe_interval: float = 30.0

    def __post_init__(self) -> None:
        problems: list[_Problem] = []
        if self.algorithm not in ("gradient", "aimd"):
            problems.append(("algorithm", "must be 'gradient' or 'aimd'", self.algorithm))
        _integer(problems, "min_limit", self.min_limit, minimum=1)
        for key in ("max_limit", "initial"):
            if getattr(self, key) is not None:
                _integer(problems, key, getattr(self, key), minimum=1)
        if not problems:
            if self.max_limit is not None and self.max_limit < self.min_limit:
                problems.append(
                    ("max_limit", f"must be >= min_limit ({self.min_limit})", self.max_limit)
                )
            elif self.initial is not None and self.initial < self.min_limit:
                problems.append(
                    ("initial", f"must be >= min_limit ({self.min_limit})", self.initial)
                )
            elif (
                self.initial is not None
                and self.max_limit is not None
                and self.initial > self.max_limit
            ):
                problems.append(
                    ("initial", f"must be <= max_limit ({self.max_limit})", self.initial)
                )
        _fraction(problems, "smoothing", self.smoothing)
        if not _is_finite(self.tolerance):
            problems.append(("tolerance", "must be a finite number", self.tolerance))
        elif not 1 < self.tolerance <= 10:
            problems.append(("tolerance", "must be in (1, 10]", self.tolerance))
        _seconds(problems, "probe_interval", self.probe_interval, optional=False, minimum=0.1)
        _raise_if("AdaptiveLimit", problems)


@dataclass(frozen=True, slots=True, kw_only=True)
class Bulkhead:
    """At most ``max_concurrent`` calls in flight to the dependency.

    Over the limit a call waits at most ``max_wait`` seconds for a slot (0: fail
    at once) and then fails fast with :class:`~seawall.BulkheadFullError`.
    With ``adaptive`` (an :class:`AdaptiveLimit`), the limit moves with the
    dependency's latency, never above ``max_concurrent``.
    """

    max_concurrent: int = 25
    max_wait: float = 0.0
    adaptive: AdaptiveLimit | None = None

    def __post_init__(self) -> None:
        problems: list[_Problem] = []
        _integer(problems, "max_concurrent", self.max_concurrent, minimum=1)
        _seconds(problems, "max_wait", self.max_wait, optional=False, zero_ok=True)
        adaptive = self.adaptive
        if adaptive is not None and not isinstance(adaptive, AdaptiveLimit):
            problems.append(("adaptive", "must be an AdaptiveLimit or None", adaptive))
        elif adaptive is not None and not problems:
            cap = self.max_concurrent
            for key in ("min_limit", "max_limit", "initial"):
                value = getattr(adaptive, key)
                if value is not None and value > cap:
                    problems.append(
                        (f"adaptive.{key}", f"must be <= max_concurrent ({cap})", value)
                    )
        _raise_if("Bulkhead", problems)


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreaker:
    """A circuit breaker with Resilience4j's semantics.

    CLOSED while the failure rate and the slow-call rate over the sliding
    ``window`` (the last ``window_size`` calls, or seconds with
    ``window="time"``) stay under their thresholds; once ``minimum_calls`` are
    in the window and a rate reaches its threshold, OPEN: calls fail fast for
    ``open_duration`` seconds (multiplied by ``open_duration_multiplier`` at
    each consecutive opening, up to ``max_open_duration``). Then HALF_OPEN:
    ``half_open_calls`` probes are let through, and their outcomes decide
    between CLOSED (with an empty window) and OPEN again.

    ``record_on`` says which errors count as failures (default: all),
    ``ignore_on`` which count as neither success nor failure; for HTTP,
    responses with a status in ``failure_statuses`` count as failures.
    A cancelled call counts as nothing.
    """

    failure_rate_threshold: float = 0.5
    slow_call_rate_threshold: float = 1.0
    slow_call_duration: float = 60.0
    window: Literal["count", "time"] = "count"
    window_size: float | None = None
    minimum_calls: int = 20
    open_duration: float = 30.0
    open_duration_multiplier: float = 1.0
    max_open_duration: float | None = None
    half_open_calls: int = 5
    failure_statuses: frozenset[int] = field(default=DEFAULT_FAILURE_STATUSES, repr=False)
    record_on: ErrorMatcher = (Exception,)
    ignore_on: ErrorMatcher = ()

    def __post_init__(self) -> None:
        given_statuses = self.failure_statuses
        object.__setattr__(self, "failure_statuses", _status_set(given_statuses))
        problems: list[_Problem] = []
        _fraction(problems, "failure_rate_threshold", self.failure_rate_threshold)
        _fraction(problems, "slow_call_rate_threshold", self.slow_call_rate_threshold)
        _seconds(problems, "slow_call_duration", self.slow_call_duration, optional=False)
        # Cross-field checks only compare values that are valid themselves, and
        # never hide (or are hidden by) a problem elsewhere.
        before = len(problems)
        if self.window not in ("count", "time"):
            problems.append(("window", "must be 'count' or 'time'", self.window))
        elif self.window_size is None:
            object.__setattr__(self, "window_size", 100 if self.window == "count" else 60.0)
        elif self.window == "count":
            _integer(problems, "window_size", self.window_size, minimum=1)
        else:
            _seconds(problems, "window_size", self.window_size, optional=False, minimum=MIN_WINDOW)
        window_ok = len(problems) == before
        before = len(problems)
        _integer(problems, "minimum_calls", self.minimum_calls, minimum=1)
        if (
            window_ok
            and len(problems) == before
            and self.window == "count"
            and self.minimum_calls > self.window_size  # type: ignore[operator]
        ):
            problems.append(
                (
                    "minimum_calls",
                    f"must be <= window_size ({self.window_size}) for a count window",
                    self.minimum_calls,
                )
            )
        before = len(problems)
        _seconds(problems, "open_duration", self.open_duration, optional=False)
        open_ok = len(problems) == before
        _multiplier(problems, "open_duration_multiplier", self.open_duration_multiplier)
        before = len(problems)
        _seconds(problems, "max_open_duration", self.max_open_duration)
        if (
            open_ok
            and len(problems) == before
            and self.max_open_duration is not None
            and self.max_open_duration < self.open_duration
        ):
            problems.append(
                (
                    "max_open_duration",
                    f"must be >= open_duration ({self.open_duration})",
                    self.max_open_duration,
                )
            )
        _integer(problems, "half_open_calls", self.half_open_calls, minimum=1)
        _statuses(
            problems, "failure_statuses", self.failure_statuses, given_statuses, lo=100, hi=599
        )
        _matcher(problems, "record_on", self.record_on)
        _matcher(problems, "ignore_on", self.ignore_on)
        _raise_if("CircuitBreaker", problems)


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """A token bucket: ``rate`` calls per ``per`` seconds, bursts up to ``burst``.

    ``burst`` defaults to ``rate`` (at least 1). Over the limit a call waits at
    most ``max_wait`` seconds for a token, then fails fast with
    :class:`~seawall.RateLimitedError` carrying ``retry_after``.
    """

    rate: float
    per: float = 1.0
    burst: float | None = None
    max_wait: float = 0.0

    def __post_init__(self) -> None:
        problems: list[_Problem] = []
        _seconds(problems, "rate", self.rate, optional=False, unit="", maximum=MAX_RATE)
        _seconds(problems, "per", self.per, optional=False, minimum=MIN_WINDOW)
        if not problems and self.per / self.rate > MAX_SECONDS:
            # One token per ``per / rate`` seconds: the wait a caller is told
            # (retry_after) must stay finite.
            problems.append(
                ("rate", f"must be >= per / {_num(MAX_SECONDS)} (per = {self.per})", self.rate)
            )
        if self.burst is None:
            if not problems:
                object.__setattr__(self, "burst", max(1.0, float(self.rate)))
        elif not _is_finite(self.burst):
            problems.append(("burst", "must be a finite number or None", self.burst))
        elif self.burst < 1:
            problems.append(("burst", "must be >= 1", self.burst))
        elif self.burst > MAX_RATE:
            problems.append(("burst", f"must be <= {_num(MAX_RATE)}", self.burst))
        _seconds(problems, "max_wait", self.max_wait, optional=False, zero_ok=True)
        _raise_if("RateLimit", problems)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fallback:
    """What answers when a call fails.

    With ``stale_if_error`` (seconds), successful GET responses are kept, and a
    failed GET to the same key is answered with the last good response if it is
    younger than that, with an ``Age`` header. The cache holds at most
    ``max_entries`` responses and ``max_bytes`` of bodies. ``default`` is a
    static :class:`httpx.Response`, or ``(request, error) -> httpx.Response``,
    used when there is no cached answer, for the methods in
    ``default_methods`` only (GET, HEAD and OPTIONS unless you widen it: a
    canned 200 for a failed POST would tell the caller a payment went through).
    """

    stale_if_error: float | None = None
    max_entries: int = 1024
    max_bytes: int = 16 * 1024 * 1024
    default: DefaultResponse | None = None
    default_methods: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS"})

    def __post_init__(self) -> None:
        methods = self.default_methods
        if isinstance(methods, Iterable) and not isinstance(methods, str | bytes | Mapping):
            with contextlib.suppress(TypeError):
                object.__setattr__(self, "default_methods", frozenset(methods))
        problems: list[_Problem] = []
        if not isinstance(self.default_methods, frozenset) or not all(
            isinstance(m, str) and m.isupper() and m.isalpha() for m in self.default_methods
        ):
            problems.append(
                ("default_methods", "must be a set of upper-case HTTP methods", methods)
            )
        _seconds(problems, "stale_if_error", self.stale_if_error)
        _integer(problems, "max_entries", self.max_entries, minimum=1)
        _integer(problems, "max_bytes", self.max_bytes, minimum=1, maximum=MAX_BYTES)
        if self.default is not None and not callable(self.default):
            import httpx  # local: keep ``import seawall._config`` light

            if not isinstance(self.default, httpx.Response):
                problems.append(
                    ("default", "must be an httpx.Response or a callable", self.default)
                )
        _raise_if("Fallback", problems)


@dataclass(frozen=True, slots=True, kw_only=True)
class GlobalBulkhead:
    """A cap on calls in flight to the dependency across every replica (``Shared.bulkhead``).

    Redis holds each live replica's slot count and keeps their sum at most
    ``max_concurrent``; the policy's own :class:`Bulkhead`, if any, still caps
    each replica. A replica asks for ``grant_step`` slots at a time (default
    ``max(1, max_concurrent // 16)``) and gives back those idle for
    ``idle_release`` seconds. ``grant_step=1, idle_release=0`` makes the cap
    exact, at one Redis round trip per call. While Redis cannot be reached,
    ``on_unavailable="local_share"`` caps each replica at
    ``max(1, max_concurrent // live replicas last seen)``; ``"reject"`` refuses
    calls instead.
    """

    max_concurrent: int
    grant_step: int | None = None
    idle_release: float = 0.5
    on_unavailable: Literal["local_share", "reject"] = "local_share"

    def __post_init__(self) -> None:
        problems: list[_Problem] = []
        _integer(problems, "max_concurrent", self.max_concurrent, minimum=1)
        if self.grant_step is None:
            if not problems:
                object.__setattr__(self, "grant_step", max(1, self.max_concurrent // 16))
        else:
            before = len(problems)
            _integer(problems, "grant_step", self.grant_step, minimum=1)
            if len(problems) == before and not problems and self.grant_step > self.max_concurrent:
                problems.append(
                    (
                        "grant_step",
                        f"must be <= max_concurrent ({self.max_concurrent})",
                        self.grant_step,
                    )
                )
        _seconds(problems, "idle_release", self.idle_release, optional=False, zero_ok=True)
        if self.on_unavailable not in ("local_share", "reject"):
            problems.append(
                ("on_unavailable", "must be 'local_share' or 'reject'", self.on_unavailable)
            )
        _raise_if("GlobalBulkhead", problems)


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedRateLimit:
    """The policy's :class:`RateLimit` made global (``Shared.rate_limit``).

    A replica reserves ``reserve`` tokens at a time (default: 50 ms worth of
    the rate, at least 1) and spends them locally; unspent ones expire after
    ``reserve_ttl`` seconds. In any window of ``w`` seconds all replicas
    together send at most ``rate * (w + reserve_ttl) + burst`` calls.
    ``reserve=1, reserve_ttl=0`` is exact, at one Redis round trip per call.
    """

    reserve: int | None = None
    reserve_ttl: float = 0.05

    def __post_init__(self) -> None:
        problems: list[_Problem] = []
        if self.reserve is not None:
            _integer(problems, "reserve", self.reserve, minimum=1)
        _seconds(problems, "reserve_ttl", self.reserve_ttl, optional=False, zero_ok=True)
        _raise_if("SharedRateLimit", problems)


@dataclass(frozen=True, slots=True, kw_only=True)
class Shared:
    """State shared across replicas through a state backend (``seawall.redis.RedisState``).

    ``breaker="advisory"``: the breaker also follows the replicas' verdict,
    open when at least ``quorum`` live replicas, and ``quorum_ratio`` of those
    with evidence, are tripped; a closed breaker adopts it only while its own
    evidence is thin (fewer than ``minimum_calls``, or a failure rate of at
    least ``assist_ratio`` times the threshold). ``bulkhead`` caps calls in
    flight across replicas (:class:`GlobalBulkhead`); ``rate_limit`` makes
    the policy's rate limit global (``True`` or a :class:`SharedRateLimit`);
    ``fallback=True`` adds a shared tier under the stale-if-error cache.
    Redis only informs these decisions: when it is slow or down, each one
    falls back to local state (see docs/shared-state.md).
    """

    breaker: Literal["off", "advisory"] = "off"
    quorum: int = 2
    quorum_ratio: float = 0.5
    assist_ratio: float = 0.5
    bulkhead: GlobalBulkhead | None = None
    rate_limit: SharedRateLimit | bool | None = None
    fallback: bool = False

    def __post_init__(self) -> None:
        if self.rate_limit is True:
            object.__setattr__(self, "rate_limit", SharedRateLimit())
        elif self.rate_limit is False:
            object.__setattr__(self, "rate_limit", None)
        problems: list[_Problem] = []
        if self.breaker not in ("off", "advisory"):
            problems.append(("breaker", "must be 'off' or 'advisory'", self.breaker))
        _integer(problems, "quorum", self.quorum, minimum=1)
        _fraction(problems, "quorum_ratio", self.quorum_ratio)
        _fraction(problems, "assist_ratio", self.assist_ratio, zero_ok=True)
        if self.bulkhead is not None and not isinstance(self.bulkhead, GlobalBulkhead):
            problems.append(("bulkhead", "must be a GlobalBulkhead or None", self.bulkhead))
        if self.rate_limit is not None and not isinstance(self.rate_limit, SharedRateLimit):
            problems.append(
                ("rate_limit", "must be a SharedRateLimit, True or False", self.rate_limit)
            )
        if not isinstance(self.fallback, bool):
            problems.append(("fallback", "must be a boolean", self.fallback))
        _raise_if("Shared", problems)

    @property
    def shared_rate_limit(self) -> SharedRateLimit | None:
        """``rate_limit`` as its type after normalisation (``True`` became a SharedRateLimit)."""
        return self.rate_limit if isinstance(self.rate_limit, SharedRateLimit) else None


def _shared_problems(policy_parts: Mapping[str, Any]) -> list[_Problem]:
    """What a policy's ``shared`` asks of the rest of the policy (key paths from the policy).

    *policy_parts* are Policy keywords; a part left out has its default.
    """
    if "shared" not in policy_parts:
        return []
    defaults = {f.name: f for f in fields(Policy)}

    def part(name: str) -> Any:
        if name in policy_parts:
            return policy_parts[name]
        f = defaults[name]
        return f.default_factory() if f.default_factory is not MISSING else f.default

    policy_parts = {name: part(name) for name in ("shared", "breaker", "rate_limit", "fallback")}
    shared = policy_parts.get("shared")
    if not isinstance(shared, Shared):
        return []
    problems: list[_Problem] = []
    if shared.breaker == "advisory" and policy_parts.get("breaker") is None:
        problems.append(("shared.breaker", "needs a breaker in the policy", shared.breaker))
    if shared.rate_limit is not None and policy_parts.get("rate_limit") is None:
        problems.append(("shared.rate_limit", "needs a rate_limit in the policy", True))
    fallback = policy_parts.get("fallback")
    if shared.fallback and (fallback is None or fallback.stale_if_error is None):
        problems.append(
            ("shared.fallback", "needs a fallback with stale_if_error in the policy", True)
        )
    return problems


_BOUND = re.compile(r"([<>]=) ([0-9_.]+)")
_NAMESPACE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def state_problems(
    *,
    namespace: object,
    budget: object,
    sync_interval: object,
    command_timeout: object,
    lease_ttl: object,
) -> list[_Problem]:
    """The checks of a state backend's settings, shared by ``[state]`` and RedisState."""
    problems: list[_Problem] = []
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        problems.append(
            ("namespace", "must be 1-64 characters of letters, digits and _.:-", namespace)
        )
    _seconds(problems, "budget", budget, optional=False, maximum=1.0)
    before = len(problems)
    _seconds(problems, "sync_interval", sync_interval, optional=False, minimum=0.01, maximum=60.0)
    interval_ok = len(problems) == before
    _seconds(problems, "command_timeout", command_timeout, optional=False, maximum=60.0)
    before = len(problems)
    _seconds(problems, "lease_ttl", lease_ttl, optional=False, maximum=3600.0)
    if interval_ok and len(problems) == before and lease_ttl < 2 * sync_interval:  # type: ignore[operator]
        problems.append(("lease_ttl", "must be at least twice sync_interval", lease_ttl))
    return problems


@dataclass(frozen=True, slots=True, kw_only=True)
class StateSettings:
    """The ``[state]`` table of a configuration file: where shared state lives.

    ``backend = "redis"``; the URL is read from the environment variable
    ``url_env`` when the registry starts (a file never holds a password), as
    is the shared cache's secret (``cache_secret_env``). Durations are given
    in milliseconds in the file (``budget_ms``...), in seconds here.
    """

    backend: Literal["redis"] = "redis"
    url_env: str | None = None
    namespace: str = "seawall"
    budget: float = 0.010
    sync_interval: float = 0.25
    command_timeout: float = 0.25
    lease_ttl: float = 5.0
    cache_secret_env: str | None = None

    def __post_init__(self) -> None:
        problems: list[_Problem] = []
        if self.backend != "redis":
            problems.append(("backend", "must be 'redis'", self.backend))
        for key in ("url_env", "cache_secret_env"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not _ENV_NAME.fullmatch(value)):
                problems.append((key, "must be an environment variable name", value))
        problems.extend(
            state_problems(
                namespace=self.namespace,
                budget=self.budget,
                sync_interval=self.sync_interval,
                command_timeout=self.command_timeout,
                lease_ttl=self.lease_ttl,
            )
        )
        _raise_if("StateSettings", problems)


# [state] keys: the file's name, the field, and the scale from the file's unit.
_STATE_KEYS: dict[str, tuple[str, float]] = {
    "backend": ("backend", 1.0),
    "url_env": ("url_env", 1.0),
    "namespace": ("namespace", 1.0),
    "budget_ms": ("budget", 0.001),
    "sync_interval_ms": ("sync_interval", 0.001),
    "command_timeout_ms": ("command_timeout", 0.001),
    "lease_ttl_ms": ("lease_ttl", 0.001),
    "cache_secret_env": ("cache_secret_env", 1.0),
}


def _state_from_mapping(data: object, problems: list[str]) -> StateSettings | None:
    """The ``[state]`` table; problems carry ``state.<key>`` paths, in the file's units."""
    if not isinstance(data, Mapping):
        problems.append(_line("state", "must be a table", data))
        return None
    before = len(problems)
    kwargs: dict[str, Any] = {}
    given: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _STATE_KEYS:
            problems.append(
                _line(f"state.{_key(key)}", "unknown key", value, secret=_is_secret_key(key))
            )
            continue
        name, scale = _STATE_KEYS[key]
        given[name] = value
        if scale != 1.0:
            if not _is_finite(value):
                problems.append(_line(f"state.{key}", "must be a finite number", value))
                continue
            value = value * scale
        kwargs[name] = value
    if "backend" not in data:
        problems.append('state.backend: must be set ("redis"), got nothing')
    try:
        settings = StateSettings(**kwargs)
    except ConfigError as exc:
        units = {name: (key, scale) for key, (name, scale) in _STATE_KEYS.items()}
        for field_name, message, value in exc._raw:
            key, scale = units[field_name]
            if scale != 1.0:  # the file's unit, in the bounds too
                message = _in_unit(message, scale)
            problems.append(_line(f"state.{key}", message, given.get(field_name, value)))
        return None
    return settings if len(problems) == before else None


def _in_unit(message: str, scale: float) -> str:
    """A problem's message with its bounds in the file's unit (``budget_ms: must be <= 1000``)."""

    def bound(match: re.Match[str]) -> str:
        return f"{match[1]} {_num(round(float(match[2].replace('_', '')) / scale, 6))}"

    return _BOUND.sub(bound, message).replace("sync_interval", "sync_interval_ms")


class _DerivedKeepalive(int):
    """``Pool.max_keepalive`` that was not given: ``min(20, max_connections)``.

    An int, so every reader sees a plain number; its type marks it as derived,
    so that ``dataclasses.replace(pool, max_connections=5)`` derives it again
    instead of keeping a value the user never set.
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Hedge:
    """Hedged requests: after ``delay`` without an answer, send the same request again.

    The first acceptable answer wins; the others are cancelled. With
    ``delay_from="p95"`` the delay is the dependency's recent 95th percentile
    latency, bounded by ``min_delay`` and ``max_delay`` (``delay`` until enough
    calls were seen). Only idempotent or keyed requests are hedged (for a
    guard: every call, since the policy says so); hedges spend the retry
    budget and never wait for a bulkhead slot.
    """

    delay: float = 0.1
    max_hedges: int = 1
    delay_from: Literal["p95"] | None = None
    min_delay: float = 0.01
    max_delay: float = 1.0

    def __post_init__(self) -> None:
        problems: list[_Problem] = []
        _seconds(problems, "delay", self.delay, optional=False)
        _integer(problems, "max_hedges", self.max_hedges, minimum=1, maximum=8)
        if self.delay_from not in (None, "p95"):
            problems.append(("delay_from", "must be 'p95' or None", self.delay_from))
        _seconds(problems, "min_delay", self.min_delay, optional=False)
        _seconds(problems, "max_delay", self.max_delay, optional=False)
        if not problems and self.min_delay > self.max_delay:
            problems.append(
                ("min_delay", f"must be <= max_delay ({self.max_delay})", self.min_delay)
            )
        _raise_if("Hedge", problems)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pool:
    """The dependency's own connection pool (see httpx.Limits).

    ``max_keepalive`` (idle connections kept open) defaults to
    ``min(20, max_connections)``; a value you give must be <= ``max_connections``.
    """

    max_connections: int = 100
    max_keepalive: int = _DerivedKeepalive(20)
    keepalive_expiry: float | None = 5.0

    def __post_init__(self) -> None:
        problems: list[_Problem] = []
        _integer(problems, "max_connections", self.max_connections, minimum=1)
        if type(self.max_keepalive) is _DerivedKeepalive and not problems:
            object.__setattr__(
                self, "max_keepalive", _DerivedKeepalive(min(20, self.max_connections))
            )
        _integer(problems, "max_keepalive", self.max_keepalive, minimum=0)
        if not problems and self.max_keepalive > self.max_connections:
            problems.append(
                (
                    "max_keepalive",
                    f"must be <= max_connections ({self.max_connections})",
                    self.max_keepalive,
                )
            )
        _seconds(problems, "keepalive_expiry", self.keepalive_expiry, zero_ok=True)
        _raise_if("Pool", problems)


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """Everything that protects one dependency, as one frozen bundle.

    A part set to ``None`` is off. The default policy bounds every call
    (timeouts), retries only where safe, and trips a breaker on a failing
    dependency; bulkhead, rate limit and fallback are opt-in because their
    right sizes depend on the dependency. ``forward_deadline`` sends the
    remaining time budget downstream in the request's deadline header.
    """

    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: Retry | None = field(default_factory=Retry)
    bulkhead: Bulkhead | None = None
    breaker: CircuitBreaker | None = field(default_factory=CircuitBreaker)
    rate_limit: RateLimit | None = None
    fallback: Fallback | None = None
    pool: Pool = field(default_factory=Pool)
    #: Shared across replicas through the registry's state backend (None: local only).
    shared: Shared | None = None
    hedge: Hedge | None = None
    forward_deadline: bool = False
    #: The request headers whose (non-blank) value is an idempotency key: a
    #: POST or PATCH carrying one may be retried after it was sent. The first
    #: is the one ``idempotency_key=`` sets.
    idempotency_headers: tuple[str, ...] = ("Idempotency-Key",)

    def __post_init__(self) -> None:
        problems: list[_Problem] = []
        headers = self.idempotency_headers
        if isinstance(headers, list):
            headers = tuple(headers)
            object.__setattr__(self, "idempotency_headers", headers)
        if not _header_names(headers):
            problems.append(
                ("idempotency_headers", "must be a non-empty list of header names", headers)
            )
        for name, cls, optional in _POLICY_PARTS:
            value = getattr(self, name)
            if value is None and optional:
                continue
            if not isinstance(value, cls):
                problems.append(
                    (name, f"must be a {cls.__name__}" + (" or None" if optional else ""), value)
                )
        if not isinstance(self.forward_deadline, bool):
            problems.append(("forward_deadline", "must be a boolean", self.forward_deadline))
        if not problems:
            problems.extend(_shared_problems({n: getattr(self, n) for n, _, _ in _POLICY_PARTS}))
        _raise_if("Policy", problems)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, path: str = "") -> Policy:
        """Build a policy from plain data, as found in a TOML or JSON file.

        Each part is a table of that class's keyword arguments (``retry`` may
        hold a ``backoff`` and a ``budget`` table); ``false`` turns an optional
        part off. Unknown keys are errors. ``path`` prefixes the key paths in
        error messages.
        """
        problems: list[str] = []
        policy = _policy_from_mapping(data, path, problems)
        if problems or policy is None:
            raise ConfigError(problems)
        return policy


_POLICY_PARTS: tuple[tuple[str, type, bool], ...] = (
    ("timeouts", Timeouts, False),
    ("retry", Retry, True),
    ("bulkhead", Bulkhead, True),
    ("breaker", CircuitBreaker, True),
    ("rate_limit", RateLimit, True),
    ("fallback", Fallback, True),
    ("pool", Pool, False),
    ("shared", Shared, True),
    ("hedge", Hedge, True),
)

# Keys a mapping may set for each class: the data-shaped fields (predicates
# and callables are for code, not files).
_MAPPING_KEYS: dict[type, frozenset[str]] = {
    Timeouts: frozenset(f.name for f in fields(Timeouts)),
    Backoff: frozenset(f.name for f in fields(Backoff)),
    RetryBudget: frozenset(f.name for f in fields(RetryBudget)),
    Retry: frozenset({"attempts", "backoff", "budget", "retry_statuses", "max_retry_after"}),
    Bulkhead: frozenset(f.name for f in fields(Bulkhead)),
    AdaptiveLimit: frozenset(f.name for f in fields(AdaptiveLimit)),
    CircuitBreaker: frozenset(f.name for f in fields(CircuitBreaker)) - {"record_on", "ignore_on"},
    RateLimit: frozenset(f.name for f in fields(RateLimit)),
    Fallback: frozenset(
        {"stale_if_error", "max_entries", "max_bytes", "default", "default_methods"}
    ),
    Pool: frozenset(f.name for f in fields(Pool)),
    Shared: frozenset(f.name for f in fields(Shared)),
    GlobalBulkhead: frozenset(f.name for f in fields(GlobalBulkhead)),
    SharedRateLimit: frozenset(f.name for f in fields(SharedRateLimit)),
    Hedge: frozenset(f.name for f in fields(Hedge)),
}


# Stand-ins for required keys that are missing from a table: they let the other
# keys of that table be checked too (the object built is thrown away).
_PLACEHOLDERS: dict[tuple[type, str], object] = {
    (RateLimit, "rate"): 1.0,
    (GlobalBulkhead, "max_concurrent"): 1,
}


def _build(cls: type, data: object, path: str, problems: list[str], *, optional: bool) -> Any:
    """Build one config object from a table, appending problems with full key paths.

    Every key of the table is checked, even after a problem was found, so that
    all problems are reported at once; None is returned if there was any.
    """
    if data is False and optional:
        return None
    if not isinstance(data, Mapping):
        problems.append(_line(path, "must be a table" + (" or false" if optional else ""), data))
        return None
    before = len(problems)
    allowed = _MAPPING_KEYS[cls]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in allowed:
            problems.append(
                _line(f"{path}.{_key(key)}", "unknown key", value, secret=_is_secret_key(key))
            )
            continue
        n = len(problems)
        if cls is Retry and key == "backoff":
            value = _build(Backoff, value, f"{path}.backoff", problems, optional=False)
        elif cls is Retry and key == "budget":
            value = _build(RetryBudget, value, f"{path}.budget", problems, optional=True)
        elif cls is Bulkhead and key == "adaptive":
            value = _build(AdaptiveLimit, value, f"{path}.adaptive", problems, optional=True)
        elif cls is Fallback and key == "default":
            value = _response_from_mapping(value, f"{path}.default", problems)
        elif cls is Shared and key == "bulkhead":
            value = _build(GlobalBulkhead, value, f"{path}.bulkhead", problems, optional=True)
        elif cls is Shared and key == "rate_limit" and not isinstance(value, bool):
            value = _build(SharedRateLimit, value, f"{path}.rate_limit", problems, optional=True)
        if len(problems) == n:  # a part that failed is left out: its problems are reported
            kwargs[key] = value
    for f in fields(cls):
        if f.default is MISSING and f.default_factory is MISSING and f.name not in data:
            problems.append(f"{path}.{f.name}: must be set, got nothing")
            if (cls, f.name) not in _PLACEHOLDERS:
                return None
            kwargs[f.name] = _PLACEHOLDERS[cls, f.name]
    try:
        built = cls(**kwargs)
    except ConfigError as exc:
        problems.extend(_fmt(f"{path}.", p) for p in exc._raw)
        return None
    return built if len(problems) == before else None


def _response_from_mapping(data: object, path: str, problems: list[str]) -> Any:
    """``default = {status = 200, json = {...}}`` or ``{status, headers, text}``."""
    import httpx

    if not isinstance(data, Mapping):
        if isinstance(data, httpx.Response) or callable(data):  # from Python code
            return data
        problems.append(_line(path, "must be a table of status, headers, json or text", data))
        return None
    before = len(problems)
    problems.extend(
        _line(f"{path}.{_key(key)}", "unknown key", data[key], secret=_is_secret_key(key))
        for key in data
        if key not in ("status", "headers", "json", "text")
    )
    status = data.get("status", 200)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        problems.append(_line(f"{path}.status", "must be a status code in 100..599", status))
    headers = data.get("headers", {})
    if not _is_str_table(headers):
        problems.append(_line(f"{path}.headers", "must be a table of strings", headers))
    elif not all(k.isascii() and v.isascii() for k, v in headers.items()):
        problems.append(_line(f"{path}.headers", "must be a table of ASCII strings", headers))
    text = data.get("text")
    if text is not None and not isinstance(text, str):
        problems.append(_line(f"{path}.text", "must be a string", text))
    if "json" in data and "text" in data:
        problems.append(_line(f"{path}.text", "set json or text, not both", text))
    elif "json" in data:
        try:
            json.dumps(data["json"], allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            problems.append(
                _line(f"{path}.json", "must be JSON data (no dates, NaN or infinity)", data["json"])
            )
    if len(problems) > before:
        return None
    try:
        if "json" in data:
            return httpx.Response(status, headers=dict(headers), json=data["json"])
        return httpx.Response(status, headers=dict(headers), text=text or "")
    except (TypeError, ValueError) as exc:  # text httpx cannot encode, say
        problems.append(_line(path, f"cannot be made a response ({type(exc).__name__})", data))
        return None


def _is_str_table(value: object) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def _header_names(value: object) -> bool:
    """A non-empty tuple of valid HTTP header names (RFC 9110 tokens)."""
    return (
        isinstance(value, tuple)
        and bool(value)
        and all(isinstance(v, str) and _TOKEN.fullmatch(v) is not None for v in value)
    )


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _policy_from_mapping(data: object, path: str, problems: list[str]) -> Policy | None:
    prefix = f"{path}." if path else ""
    if not isinstance(data, Mapping):
        problems.append(_line(path or "<policy>", "must be a table", data))
        return None
    before = len(problems)
    kwargs: dict[str, Any] = {}
    parts = {name: (cls, optional) for name, cls, optional in _POLICY_PARTS}
    for key, value in data.items():
        if key == "forward_deadline":
            if not isinstance(value, bool):
                problems.append(_line(f"{prefix}forward_deadline", "must be a boolean", value))
            kwargs[key] = value
        elif key == "idempotency_headers":
            names = tuple(value) if isinstance(value, list) else value
            if not _header_names(names):
                problems.append(
                    _line(
                        f"{prefix}idempotency_headers",
                        "must be a non-empty list of header names",
                        value,
                    )
                )
            kwargs[key] = names
        elif key in parts:
            cls, optional = parts[key]
            kwargs[key] = _build(cls, value, f"{prefix}{key}", problems, optional=optional)
        else:
            problems.append(
                _line(f"{prefix}{_key(key)}", "unknown key", value, secret=_is_secret_key(key))
            )
    if len(problems) > before:
        return None
    problems.extend(_fmt(prefix, p) for p in _shared_problems(kwargs))
    if len(problems) > before:
        return None
    return Policy(**kwargs)


# ---------------------------------------------------------------------------
# Whole configuration files: a [defaults] table and one [dependencies.NAME] each.


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_str_list(value: object, sizes: range) -> bool:
    return (
        isinstance(value, list) and len(value) in sizes and all(isinstance(v, str) for v in value)
    )


#: httpx.AsyncClient keywords a dependency table may carry: (is it valid, what it must be).
_HTTPX_OPTIONS: dict[str, tuple[Callable[[object], bool], str]] = {
    "headers": (_is_str_table, "a table of strings"),
    "params": (lambda v: isinstance(v, Mapping), "a table"),
    "cookies": (_is_str_table, "a table of strings"),
    "verify": (lambda v: isinstance(v, bool | str), "a boolean or a CA bundle path"),
    "cert": (
        lambda v: isinstance(v, str) or _is_str_list(v, range(2, 4)),
        "a path or a list [certfile, keyfile] or [certfile, keyfile, password]",
    ),
    "http1": (_is_bool, "a boolean"),
    "http2": (_is_bool, "a boolean"),
    "follow_redirects": (_is_bool, "a boolean"),
    "max_redirects": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "an integer >= 0",
    ),
    "trust_env": (_is_bool, "a boolean"),
    "auth": (lambda v: _is_str_list(v, range(2, 3)), "a list [username, password]"),
}
_POLICY_KEYS = frozenset(name for name, _, _ in _POLICY_PARTS) | {
    "forward_deadline",
    "idempotency_headers",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DependencySpec:
    """One dependency as configured: its merged policy, where it lives, httpx options.

    ``name`` is non-empty and printable; ``base_url`` and each of ``endpoints``
    is an http(s) URL with a host and no whitespace. Its ``repr()`` masks URL
    passwords and hides header, cookie, auth and query-parameter values.
    """

    name: str
    policy: Policy
    base_url: str | None = None
    endpoints: tuple[str, ...] = ()
    httpx_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: How seawall.outbox sends to it (a ``[dependencies.NAME.outbox]`` table), if set.
    outbox: OutboxRoute | None = None

    def __post_init__(self) -> None:
        if isinstance(self.endpoints, list):
            object.__setattr__(self, "endpoints", tuple(self.endpoints))
        problems: list[_Problem] = []
        if not _is_name(self.name):
            problems.append(("name", _NAME_RULE, self.name))
        if not isinstance(self.policy, Policy):
            problems.append(("policy", "must be a Policy", self.policy))
        if self.base_url is not None:
            _url(problems, "base_url", self.base_url)
        if not isinstance(self.endpoints, tuple):
            problems.append(("endpoints", "must be a tuple of URLs", self.endpoints))
        else:
            for i, url in enumerate(self.endpoints):
                _url(problems, f"endpoints[{i}]", url)
            if self.endpoints and self.base_url is not None:
                problems.append(
                    ("endpoints", "set base_url or endpoints, not both", self.endpoints)
                )
        if not isinstance(self.httpx_options, Mapping):
            problems.append(("httpx_options", "must be a mapping", self.httpx_options))
        if self.outbox is not None:
            from .outbox._route import OutboxRoute

            if not isinstance(self.outbox, OutboxRoute):
                problems.append(("outbox", "must be a seawall.outbox.OutboxRoute", self.outbox))
        _raise_if("DependencySpec", problems)

    def __repr__(self) -> str:
        options = {key: _option_shown(key, value) for key, value in self.httpx_options.items()}
        return (
            f"DependencySpec(name={self.name!r}, policy={self.policy!r}, "
            f"base_url={_shown(self.base_url)}, endpoints={_shown(self.endpoints)}, "
            f"httpx_options={options!r}"
            + ("" if self.outbox is None else f", outbox={self.outbox!r}")
            + ")"
        )


def _option_shown(key: str, value: object) -> object:
    """An httpx option as ``repr()`` may show it: header names, never their values."""
    if key in _SECRET_OPTIONS:
        if isinstance(value, Mapping):
            return dict.fromkeys(value, _HIDDEN)
        return _HIDDEN
    return _printable(_cert_shown(value) if key == "cert" else value)


def _cert_shown(value: object) -> object:
    """``[certfile, keyfile, password]`` with the password hidden."""
    if isinstance(value, list | tuple) and len(value) > 2:
        shown = [*value[:2], *[_HIDDEN] * (len(value) - 2)]
        return shown if isinstance(value, list) else tuple(shown)
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A whole configuration: the default policy and every dependency.

    Its ``repr()`` is made of the dependencies' and shows no secret either.
    """

    defaults: Policy
    dependencies: Mapping[str, DependencySpec]
    #: The ``[state]`` table: the shared-state backend, if any.
    state: StateSettings | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Config:
        """Validate and build a configuration from plain data (the TOML layout)."""
        problems: list[str] = []
        config = _config_from_mapping(data, problems)
        if problems or config is None:
            raise ConfigError(problems)
        return config


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two policy tables: a dependency overrides defaults key by key."""
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping) and key != "default":
            merged[key] = _merge(old, value)
        else:
            merged[key] = value
    return merged


_NAME_RULE = "must be a non-empty name of printable characters"


def _is_name(name: object) -> bool:
    """A dependency name: it labels metrics and log lines, so no control characters."""
    return isinstance(name, str) and bool(name.strip()) and name.isprintable()


def _url_problem(url: object) -> str | None:
    """What is wrong with an upstream URL, or None."""
    import httpx  # local: keep ``import seawall._config`` light

    if isinstance(url, httpx.URL):
        url = str(url)
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return "must be an http:// or https:// URL"
    if not url.isprintable() or any(c.isspace() for c in url):
        return "must be a URL without spaces or control characters"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):  # a bad port, an IDNA error
        return "must be a valid URL"
    if not parsed.host:
        return "must be a URL with a host"
    if parsed.port is not None and not 0 < parsed.port < 65536:
        return "must be a URL with a port in 1..65535"
    return None


def _url(out: list[_Problem], key: str, url: object) -> None:
    message = _url_problem(url)
    if message is not None:
        out.append((key, message, url))


def _check_url(url: object, path: str, problems: list[str]) -> None:
    message = _url_problem(url)
    if message is not None:
        problems.append(_line(path, message, url))


def _is_set(table: Mapping[str, Any], key_path: str) -> bool:
    """Whether *table* sets the dotted *key_path* itself (rather than inheriting it)."""
    node: object = table
    for part in key_path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _config_from_mapping(data: Mapping[str, Any], problems: list[str]) -> Config | None:
    if not isinstance(data, Mapping):
        problems.append(_line("<config>", "must be a table", data))
        return None
    problems.extend(
        _line(_key(key), "unknown key", data[key], secret=_is_secret_key(key))
        for key in data
        if key not in ("defaults", "dependencies", "state")
    )
    defaults_data = data.get("defaults", {})
    if not isinstance(defaults_data, Mapping):
        problems.append(_line("defaults", "must be a table", defaults_data))
        defaults_data = {}
    # Key paths relative to the policy, so that a problem a dependency merely
    # inherits from [defaults] is reported once, under defaults.
    defaults_problems: list[str] = []
    defaults = _policy_from_mapping(defaults_data, "", defaults_problems)
    problems.extend(f"defaults.{p}" for p in defaults_problems)
    deps_data = data.get("dependencies", {})
    if not isinstance(deps_data, Mapping):
        problems.append(_line("dependencies", "must be a table", deps_data))
        deps_data = {}
    specs: dict[str, DependencySpec] = {}
    for name, table in deps_data.items():
        path = f"dependencies.{_key(name)}"
        if not isinstance(table, Mapping):
            problems.append(_line(path, "must be a table", table))
            continue
        before = len(problems)
        if not _is_name(name):
            problems.append(_line(path, f"{_NAME_RULE} (the dependency's name)", name))
        policy_part: dict[str, Any] = {}
        options: dict[str, Any] = {}
        base_url = table.get("base_url")
        endpoints = table.get("endpoints")
        outbox_route = None
        for key, value in table.items():
            if key in ("base_url", "endpoints"):
                continue
            if key == "outbox":
                from .outbox._route import OutboxRoute

                outbox_route = OutboxRoute.from_mapping(value, f"{path}.outbox", problems)
                continue
            if key in _POLICY_KEYS:
                policy_part[key] = value
            elif key in _HTTPX_OPTIONS:
                valid, kind = _HTTPX_OPTIONS[key]
                if not valid(value):
                    shown = _cert_shown(value) if key == "cert" else value
                    secret = key in _SECRET_OPTIONS
                    problems.append(_line(f"{path}.{key}", f"must be {kind}", shown, secret=secret))
                else:
                    options[key] = tuple(value) if isinstance(value, list) else value
            else:
                problems.append(
                    _line(f"{path}.{_key(key)}", "unknown key", value, secret=_is_secret_key(key))
                )
        if base_url is not None:
            _check_url(base_url, f"{path}.base_url", problems)
        if endpoints is not None:
            if base_url is not None:
                problems.append(
                    _line(f"{path}.endpoints", "set base_url or endpoints, not both", endpoints)
                )
            elif not isinstance(endpoints, list) or not endpoints:
                problems.append(
                    _line(f"{path}.endpoints", "must be a non-empty list of URLs", endpoints)
                )
            else:
                for i, url in enumerate(endpoints):
                    _check_url(url, f"{path}.endpoints[{i}]", problems)
        dep_problems: list[str] = []
        policy = _policy_from_mapping(_merge(defaults_data, policy_part), "", dep_problems)
        problems.extend(
            f"{path}.{p}"
            for p in dep_problems
            if p not in defaults_problems or _is_set(policy_part, p.partition(":")[0])
        )
        if policy is not None and len(problems) == before:
            specs[name] = DependencySpec(
                name=name,
                policy=policy,
                base_url=base_url,
                endpoints=tuple(endpoints or ()),
                httpx_options=MappingProxyType(options),
                outbox=outbox_route,
            )
    state = _state_from_mapping(data["state"], problems) if "state" in data else None
    if problems or defaults is None:
        return None
    return Config(defaults=defaults, dependencies=MappingProxyType(specs), state=state)


def load_config(path: str | PathLike[str]) -> Config:
    """Read and validate a TOML configuration file.

    The file has a ``[defaults]`` table that every dependency inherits (deep
    merged, key by key) and one ``[dependencies.NAME]`` table per dependency.
    Every problem is reported at once with its key path, as a ConfigError.
    """
    with open(path, "rb") as f:
        try:
            data = tomllib.load(f)
        # TOMLDecodeError, and what tomllib lets through: UnicodeDecodeError (not
        # UTF-8), ValueError (an integer of 4300+ digits), RecursionError (arrays
        # nested some hundreds deep).
        except (ValueError, RecursionError) as exc:
            raise ConfigError([f"{path}: not valid TOML ({exc})"]) from exc
    return Config.from_mapping(data)
