"""Frozen, validated settings: what a dependency's protection looks like.

The config objects hold no state. Runtime state (breaker windows, permits,
tokens, budgets, cached responses) lives in per-dependency runtime objects
owned by whatever serves the dependency (a Registry, a ResilientClient, the
guard's registry), built from these settings.

Every value is validated on construction; an invalid one raises
:class:`~seawall.ConfigError` listing every problem at once, one line each,
``key.path: what is wrong, got VALUE``. ``None`` means "disabled" wherever a
part is optional.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from os import PathLike
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from ._exceptions import ConfigError

if TYPE_CHECKING:
    import httpx

__all__ = [
    "Backoff",
    "Bulkhead",
    "CircuitBreaker",
    "Config",
    "DependencySpec",
    "Fallback",
    "Policy",
    "Pool",
    "RateLimit",
    "Retry",
    "RetryBudget",
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


def _fmt(prefix: str, problem: _Problem) -> str:
    key, message, value = problem
    return f"{prefix}{key}: {message}, got {value!r}"


def _raise_if(cls_name: str, problems: list[_Problem]) -> None:
    if problems:
        error = ConfigError([_fmt(f"{cls_name}.", p) for p in problems])
        error._raw = problems
        raise error


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _seconds(
    out: list[_Problem], key: str, value: object, *, optional: bool = True, zero_ok: bool = False
) -> None:
    """A duration: a finite number of seconds, positive (or >= 0 with zero_ok), or None."""
    if value is None:
        if not optional:
            out.append((key, "must be a number of seconds", value))
        return
    if not _is_number(value) or not math.isfinite(value):  # type: ignore[arg-type]
        out.append((key, "must be a finite number of seconds" + (" or None" if optional else ""), value))
    elif zero_ok and value < 0:  # type: ignore[operator]
        out.append((key, "must be >= 0", value))
    elif not zero_ok and value <= 0:  # type: ignore[operator]
        out.append((key, "must be > 0", value))


def _integer(out: list[_Problem], key: str, value: object, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        out.append((key, "must be an integer", value))
    elif value < minimum:
        out.append((key, f"must be >= {minimum}", value))


def _fraction(out: list[_Problem], key: str, value: object, *, zero_ok: bool = False) -> None:
    if not _is_number(value) or not math.isfinite(value):  # type: ignore[arg-type]
        out.append((key, "must be a number", value))
    elif not ((0 <= value if zero_ok else 0 < value) and value <= 1):  # type: ignore[operator]
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


def _statuses(out: list[_Problem], key: str, value: object, *, lo: int, hi: int) -> None:
    if not isinstance(value, frozenset) or not all(
        isinstance(s, int) and not isinstance(s, bool) and lo <= s <= hi for s in value
    ):
        out.append((key, f"must be a set of status codes in {lo}..{hi}", value))


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
        if not _is_number(self.multiplier) or not math.isfinite(self.multiplier):
            problems.append(("multiplier", "must be a number", self.multiplier))
        elif self.multiplier < 1:
            problems.append(("multiplier", "must be >= 1", self.multiplier))
        if not isinstance(self.jitter, bool):
            problems.append(("jitter", "must be a boolean", self.jitter))
        _raise_if("Backoff", problems)

    def delay(self, retry: int, random: Callable[[], float]) -> float:
        """The wait before retry number *retry* (1 for the first retry)."""
        cap = self.initial * self.multiplier ** (retry - 1) if retry < 64 else self.maximum
        cap = min(cap, self.maximum)
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
        if not _is_number(self.ratio) or not math.isfinite(self.ratio):
            problems.append(("ratio", "must be a number", self.ratio))
        elif not 0 <= self.ratio <= 10:
            problems.append(("ratio", "must be in [0, 10]", self.ratio))
        _seconds(problems, "min_per_second", self.min_per_second, optional=False, zero_ok=True)
        _seconds(problems, "window", self.window, optional=False)
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
        object.__setattr__(self, "retry_statuses", _status_set(self.retry_statuses))
        problems: list[_Problem] = []
        _integer(problems, "attempts", self.attempts, minimum=1)
        if not isinstance(self.backoff, Backoff):
            problems.append(("backoff", "must be a Backoff", self.backoff))
        if self.budget is not None and not isinstance(self.budget, RetryBudget):
            problems.append(("budget", "must be a RetryBudget or None", self.budget))
        _matcher(problems, "retry_on", self.retry_on)
        _statuses(problems, "retry_statuses", self.retry_statuses, lo=400, hi=599)
        _seconds(problems, "max_retry_after", self.max_retry_after, optional=False, zero_ok=True)
        _raise_if("Retry", problems)


@dataclass(frozen=True, slots=True, kw_only=True)
class Bulkhead:
    """At most ``max_concurrent`` calls in flight to the dependency.

    Over the limit a call waits at most ``max_wait`` seconds for a slot (0: fail
    at once) and then fails fast with :class:`~seawall.BulkheadFullError`.
    """

    max_concurrent: int = 25
    max_wait: float = 0.0

    def __post_init__(self) -> None:
        problems: list[_Problem] = []
        _integer(problems, "max_concurrent", self.max_concurrent, minimum=1)
        _seconds(problems, "max_wait", self.max_wait, optional=False, zero_ok=True)
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
        object.__setattr__(self, "failure_statuses", _status_set(self.failure_statuses))
        problems: list[_Problem] = []
        _fraction(problems, "failure_rate_threshold", self.failure_rate_threshold)
        _fraction(problems, "slow_call_rate_threshold", self.slow_call_rate_threshold)
        _seconds(problems, "slow_call_duration", self.slow_call_duration, optional=False)
        if self.window not in ("count", "time"):
            problems.append(("window", "must be 'count' or 'time'", self.window))
        elif self.window_size is None:
            object.__setattr__(self, "window_size", 100 if self.window == "count" else 60.0)
        elif self.window == "count":
            _integer(problems, "window_size", self.window_size, minimum=1)
        else:
            _seconds(problems, "window_size", self.window_size, optional=False)
        _integer(problems, "minimum_calls", self.minimum_calls, minimum=1)
        if (
            not problems
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
        _seconds(problems, "open_duration", self.open_duration, optional=False)
        if not _is_number(self.open_duration_multiplier) or not math.isfinite(
            self.open_duration_multiplier
        ):
            problems.append(
                ("open_duration_multiplier", "must be a number", self.open_duration_multiplier)
            )
        elif self.open_duration_multiplier < 1:
            problems.append(("open_duration_multiplier", "must be >= 1", self.open_duration_multiplier))
        _seconds(problems, "max_open_duration", self.max_open_duration)
        if (
            _is_number(self.max_open_duration)
            and _is_number(self.open_duration)
            and self.max_open_duration < self.open_duration  # type: ignore[operator]
        ):
            problems.append(
                (
                    "max_open_duration",
                    f"must be >= open_duration ({self.open_duration})",
                    self.max_open_duration,
                )
            )
        _integer(problems, "half_open_calls", self.half_open_calls, minimum=1)
        _statuses(problems, "failure_statuses", self.failure_statuses, lo=100, hi=599)
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
        _seconds(problems, "rate", self.rate, optional=False)
        _seconds(problems, "per", self.per, optional=False)
        if self.burst is None:
            if not problems:
                object.__setattr__(self, "burst", max(1.0, float(self.rate)))
        elif not _is_number(self.burst) or not math.isfinite(self.burst):
            problems.append(("burst", "must be a number or None", self.burst))
        elif self.burst < 1:
            problems.append(("burst", "must be >= 1", self.burst))
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
    used when there is no cached answer.
    """

    stale_if_error: float | None = None
    max_entries: int = 1024
    max_bytes: int = 16 * 1024 * 1024
    default: DefaultResponse | None = None

    def __post_init__(self) -> None:
        problems: list[_Problem] = []
        _seconds(problems, "stale_if_error", self.stale_if_error)
        _integer(problems, "max_entries", self.max_entries, minimum=1)
        _integer(problems, "max_bytes", self.max_bytes, minimum=1)
        if self.default is not None and not callable(self.default):
            import httpx  # local: keep ``import seawall._config`` light

            if not isinstance(self.default, httpx.Response):
                problems.append(
                    ("default", "must be an httpx.Response or a callable", self.default)
                )
        _raise_if("Fallback", problems)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pool:
    """The dependency's own connection pool (see httpx.Limits)."""

    max_connections: int = 100
    max_keepalive: int = 20
    keepalive_expiry: float | None = 5.0

    def __post_init__(self) -> None:
        problems: list[_Problem] = []
        _integer(problems, "max_connections", self.max_connections, minimum=1)
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
    forward_deadline: bool = False

    def __post_init__(self) -> None:
        problems: list[_Problem] = []
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
)

# Keys a mapping may set for each class: the data-shaped fields (predicates
# and callables are for code, not files).
_MAPPING_KEYS: dict[type, frozenset[str]] = {
    Timeouts: frozenset(f.name for f in fields(Timeouts)),
    Backoff: frozenset(f.name for f in fields(Backoff)),
    RetryBudget: frozenset(f.name for f in fields(RetryBudget)),
    Retry: frozenset({"attempts", "backoff", "budget", "retry_statuses", "max_retry_after"}),
    Bulkhead: frozenset(f.name for f in fields(Bulkhead)),
    CircuitBreaker: frozenset(f.name for f in fields(CircuitBreaker)) - {"record_on", "ignore_on"},
    RateLimit: frozenset(f.name for f in fields(RateLimit)),
    Fallback: frozenset({"stale_if_error", "max_entries", "max_bytes", "default"}),
    Pool: frozenset(f.name for f in fields(Pool)),
}


def _build(
    cls: type, data: object, path: str, problems: list[str], *, optional: bool
) -> Any:
    """Build one config object from a table, appending problems with full key paths."""
    if data is False and optional:
        return None
    if not isinstance(data, Mapping):
        problems.append(
            f"{path}: must be a table" + (" or false" if optional else "") + f", got {data!r}"
        )
        return None
    allowed = _MAPPING_KEYS[cls]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in allowed:
            problems.append(f"{path}.{key}: unknown key, got {value!r}")
            continue
        if cls is Retry and key == "backoff":
            value = _build(Backoff, value, f"{path}.backoff", problems, optional=False)
            if value is None:
                return None
        elif cls is Retry and key == "budget":
            value = _build(RetryBudget, value, f"{path}.budget", problems, optional=True)
            if value is None and data[key] is not False:
                return None
        elif cls is Fallback and key == "default" and isinstance(value, Mapping):
            value = _response_from_mapping(value, f"{path}.default", problems)
            if value is None:
                return None
        kwargs[key] = value
    if len(problems) and any(p.startswith(f"{path}.") for p in problems):
        return None
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        problems.extend(_fmt(f"{path}.", p) for p in exc._raw)
    except TypeError as exc:  # a required key is missing
        problems.append(f"{path}: {exc}, got {dict(data)!r}")
    return None


def _response_from_mapping(data: Mapping[str, Any], path: str, problems: list[str]) -> Any:
    """``default = {status = 200, json = {...}}`` or ``{status, headers, text}``."""
    import httpx

    unknown = set(data) - {"status", "headers", "json", "text"}
    for key in sorted(unknown):
        problems.append(f"{path}.{key}: unknown key, got {data[key]!r}")
    status = data.get("status", 200)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        problems.append(f"{path}.status: must be a status code in 100..599, got {status!r}")
    headers = data.get("headers", {})
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        problems.append(f"{path}.headers: must be a table of strings, got {headers!r}")
    text = data.get("text")
    if text is not None and not isinstance(text, str):
        problems.append(f"{path}.text: must be a string, got {text!r}")
    if unknown or any(p.startswith(f"{path}.") for p in problems):
        return None
    if "json" in data:
        return httpx.Response(status, headers=dict(headers), json=data["json"])
    return httpx.Response(status, headers=dict(headers), text=text or "")


def _policy_from_mapping(data: object, path: str, problems: list[str]) -> Policy | None:
    prefix = f"{path}." if path else ""
    if not isinstance(data, Mapping):
        problems.append(f"{path or '<policy>'}: must be a table, got {data!r}")
        return None
    before = len(problems)
    kwargs: dict[str, Any] = {}
    parts = {name: (cls, optional) for name, cls, optional in _POLICY_PARTS}
    for key, value in data.items():
        if key == "forward_deadline":
            if not isinstance(value, bool):
                problems.append(f"{prefix}forward_deadline: must be a boolean, got {value!r}")
            kwargs[key] = value
        elif key in parts:
            cls, optional = parts[key]
            kwargs[key] = _build(cls, value, f"{prefix}{key}", problems, optional=optional)
        else:
            problems.append(f"{prefix}{key}: unknown key, got {value!r}")
    if len(problems) > before:
        return None
    return Policy(**kwargs)


# ---------------------------------------------------------------------------
# Whole configuration files: a [defaults] table and one [dependencies.NAME] each.

#: httpx.AsyncClient keywords a dependency table may carry, and their types.
_HTTPX_OPTIONS: dict[str, tuple[type, ...]] = {
    "headers": (Mapping,),
    "params": (Mapping,),
    "cookies": (Mapping,),
    "verify": (bool, str),
    "cert": (str, list),
    "http1": (bool,),
    "http2": (bool,),
    "follow_redirects": (bool,),
    "max_redirects": (int,),
    "trust_env": (bool,),
    "auth": (list,),
}
_POLICY_KEYS = frozenset(name for name, _, _ in _POLICY_PARTS) | {"forward_deadline"}


@dataclass(frozen=True, slots=True, kw_only=True)
class DependencySpec:
    """One dependency as configured: its merged policy, where it lives, httpx options."""

    name: str
    policy: Policy
    base_url: str | None = None
    endpoints: tuple[str, ...] = ()
    httpx_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A whole configuration: the default policy and every dependency."""

    defaults: Policy
    dependencies: Mapping[str, DependencySpec]

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


def _check_url(url: object, path: str, problems: list[str]) -> None:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        problems.append(f"{path}: must be an http:// or https:// URL, got {url!r}")


def _config_from_mapping(data: Mapping[str, Any], problems: list[str]) -> Config | None:
    if not isinstance(data, Mapping):
        problems.append(f"<config>: must be a table, got {data!r}")
        return None
    for key in data:
        if key not in ("defaults", "dependencies"):
            problems.append(f"{key}: unknown key, got {data[key]!r}")
    defaults_data = data.get("defaults", {})
    if not isinstance(defaults_data, Mapping):
        problems.append(f"defaults: must be a table, got {defaults_data!r}")
        defaults_data = {}
    defaults = _policy_from_mapping(defaults_data, "defaults", problems)
    deps_data = data.get("dependencies", {})
    if not isinstance(deps_data, Mapping):
        problems.append(f"dependencies: must be a table, got {deps_data!r}")
        deps_data = {}
    specs: dict[str, DependencySpec] = {}
    for name, table in deps_data.items():
        path = f"dependencies.{name}"
        if not isinstance(table, Mapping):
            problems.append(f"{path}: must be a table, got {table!r}")
            continue
        policy_part: dict[str, Any] = {}
        options: dict[str, Any] = {}
        base_url = table.get("base_url")
        endpoints = table.get("endpoints")
        for key, value in table.items():
            if key in ("base_url", "endpoints"):
                continue
            if key in _POLICY_KEYS:
                policy_part[key] = value
            elif key in _HTTPX_OPTIONS:
                if not isinstance(value, _HTTPX_OPTIONS[key]) or isinstance(value, bool) != (
                    bool in _HTTPX_OPTIONS[key] and isinstance(value, bool)
                ):
                    kinds = " or ".join(t.__name__ for t in _HTTPX_OPTIONS[key])
                    problems.append(f"{path}.{key}: must be of type {kinds}, got {value!r}")
                else:
                    options[key] = tuple(value) if key == "auth" else value
            else:
                problems.append(f"{path}.{key}: unknown key, got {value!r}")
        if base_url is not None and endpoints is not None:
            problems.append(f"{path}: set base_url or endpoints, not both, got {dict(table)!r}")
        if base_url is not None:
            _check_url(base_url, f"{path}.base_url", problems)
        if endpoints is not None:
            if not isinstance(endpoints, list) or not endpoints:
                problems.append(f"{path}.endpoints: must be a non-empty list of URLs, got {endpoints!r}")
            else:
                for i, url in enumerate(endpoints):
                    _check_url(url, f"{path}.endpoints[{i}]", problems)
        merged = _merge(defaults_data, policy_part)
        policy = _policy_from_mapping(merged, path, problems)
        if policy is not None:
            specs[name] = DependencySpec(
                name=name,
                policy=policy,
                base_url=base_url,
                endpoints=tuple(endpoints or ()),
                httpx_options=MappingProxyType(options),
            )
    if problems or defaults is None:
        return None
    return Config(defaults=defaults, dependencies=MappingProxyType(specs))


def load_config(path: str | PathLike[str]) -> Config:
    """Read and validate a TOML configuration file.

    The file has a ``[defaults]`` table that every dependency inherits (deep
    merged, key by key) and one ``[dependencies.NAME]`` table per dependency.
    Every problem is reported at once with its key path, as a ConfigError.
    """
    with open(path, "rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML ({exc})"]) from exc
    return Config.from_mapping(data)
