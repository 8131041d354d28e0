"""The config objects, ``Policy.from_mapping`` and ``load_config``.

Every bad input is checked against the exact problem lines it must produce:
``key.path: what is wrong, got VALUE``, one line per problem, all at once.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

import seawall
from seawall import (
    Backoff,
    Bulkhead,
    CircuitBreaker,
    Config,
    ConfigError,
    DependencySpec,
    Fallback,
    Policy,
    Pool,
    RateLimit,
    Retry,
    RetryBudget,
    Timeouts,
    load_config,
)

NAN = float("nan")
INF = float("inf")

# One problem line: a key path, what is wrong, the value.
LINE = re.compile(r"^[\w.\[\]<>-]+: [^\n]+, got [^\n]+$")


def problems_of(excinfo: pytest.ExceptionInfo[ConfigError]) -> tuple[str, ...]:
    """The problems of a ConfigError, after checking the error's own shape."""
    err = excinfo.value
    assert isinstance(err.problems, tuple)
    assert str(err) == "\n".join(err.problems)
    for line in err.problems:
        assert LINE.match(line), line
    return err.problems


def write(tmp_path: Path, text: str, name: str = "seawall.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# ConfigError itself


def test_config_error_is_a_value_error_and_a_seawall_error() -> None:
    err = ConfigError(["a.b: must be > 0, got 0", "c: unknown key, got 1"])
    assert isinstance(err, ValueError)
    assert isinstance(err, seawall.SeawallError)
    assert err.reason == "config"
    assert err.problems == ("a.b: must be > 0, got 0", "c: unknown key, got 1")
    assert str(err) == "a.b: must be > 0, got 0\nc: unknown key, got 1"


def test_config_error_is_raised_as_value_error() -> None:
    with pytest.raises(ValueError, match=r"^Bulkhead\.max_concurrent: must be >= 1, got 0$"):
        Bulkhead(max_concurrent=0)


# ---------------------------------------------------------------------------
# Direct construction: one bad value, the exact message


BAD_OBJECTS = [
    # Timeouts: positive finite seconds or None.
    pytest.param(
        Timeouts, {"connect": -1}, "Timeouts.connect: must be > 0, got -1", id="timeouts-negative"
    ),
    pytest.param(Timeouts, {"read": 0}, "Timeouts.read: must be > 0, got 0", id="timeouts-zero"),
    pytest.param(
        Timeouts,
        {"total": "30"},
        "Timeouts.total: must be a finite number of seconds or None, got '30'",
        id="timeouts-string",
    ),
    pytest.param(
        Timeouts,
        {"attempt": True},
        "Timeouts.attempt: must be a finite number of seconds or None, got True",
        id="timeouts-bool",
    ),
    pytest.param(
        Timeouts,
        {"write": NAN},
        "Timeouts.write: must be a finite number of seconds or None, got nan",
        id="timeouts-nan",
    ),
    pytest.param(
        Timeouts,
        {"pool": INF},
        "Timeouts.pool: must be a finite number of seconds or None, got inf",
        id="timeouts-inf",
    ),
    # Backoff
    pytest.param(
        Backoff,
        {"initial": -0.1},
        "Backoff.initial: must be >= 0, got -0.1",
        id="backoff-initial-negative",
    ),
    pytest.param(
        Backoff,
        {"initial": None},
        "Backoff.initial: must be a finite number of seconds, got None",
        id="backoff-initial-none",
    ),
    pytest.param(
        Backoff,
        {"initial": 2.0, "maximum": 1.0},
        "Backoff.maximum: must be >= initial (2.0), got 1.0",
        id="backoff-maximum-below-initial",
    ),
    pytest.param(
        Backoff,
        {"multiplier": 0.5},
        "Backoff.multiplier: must be >= 1, got 0.5",
        id="backoff-multiplier-small",
    ),
    pytest.param(
        Backoff,
        {"multiplier": INF},
        "Backoff.multiplier: must be a finite number, got inf",
        id="backoff-multiplier-inf",
    ),
    pytest.param(
        Backoff,
        {"multiplier": True},
        "Backoff.multiplier: must be a finite number, got True",
        id="backoff-multiplier-bool",
    ),
    pytest.param(
        Backoff, {"jitter": 1}, "Backoff.jitter: must be a boolean, got 1", id="backoff-jitter-int"
    ),
    # RetryBudget
    pytest.param(
        RetryBudget,
        {"ratio": 11},
        "RetryBudget.ratio: must be in [0, 10], got 11",
        id="budget-ratio-big",
    ),
    pytest.param(
        RetryBudget,
        {"ratio": NAN},
        "RetryBudget.ratio: must be a finite number, got nan",
        id="budget-ratio-nan",
    ),
    pytest.param(
        RetryBudget,
        {"min_per_second": -1},
        "RetryBudget.min_per_second: must be >= 0, got -1",
        id="budget-min-per-second-negative",
    ),
    pytest.param(
        RetryBudget,
        {"min_per_second": "10"},
        "RetryBudget.min_per_second: must be a finite number, got '10'",
        id="budget-min-per-second-string",
    ),
    pytest.param(
        RetryBudget,
        {"window": 0},
        "RetryBudget.window: must be > 0, got 0",
        id="budget-window-zero",
    ),
    # Retry
    pytest.param(
        Retry, {"attempts": 0}, "Retry.attempts: must be >= 1, got 0", id="retry-attempts-zero"
    ),
    pytest.param(
        Retry,
        {"attempts": 2.0},
        "Retry.attempts: must be an integer, got 2.0",
        id="retry-attempts-float",
    ),
    pytest.param(
        Retry,
        {"attempts": True},
        "Retry.attempts: must be an integer, got True",
        id="retry-attempts-bool",
    ),
    pytest.param(
        Retry,
        {"backoff": {"initial": 1}},
        "Retry.backoff: must be a Backoff, got {'initial': 1}",
        id="retry-backoff-dict",
    ),
    pytest.param(
        Retry,
        {"budget": False},
        "Retry.budget: must be a RetryBudget or None, got False",
        id="retry-budget-false",
    ),
    pytest.param(
        Retry,
        {"retry_on": (KeyboardInterrupt,)},
        "Retry.retry_on: must be a tuple of Exception subclasses or a predicate,"
        " got (<class 'KeyboardInterrupt'>,)",
        id="retry-on-base-exception",
    ),
    pytest.param(
        Retry,
        {"retry_on": ValueError},
        "Retry.retry_on: must be a tuple of Exception subclasses or a predicate,"
        " got <class 'ValueError'>",
        id="retry-on-bare-class",
    ),
    pytest.param(
        Retry,
        {"retry_statuses": [500, 200]},
        "Retry.retry_statuses: must be a set of status codes in 400..599, got [500, 200]",
        id="retry-statuses-2xx",
    ),
    pytest.param(
        Retry,
        {"retry_statuses": [True]},
        "Retry.retry_statuses: must be a set of status codes in 400..599, got [True]",
        id="retry-statuses-bool",
    ),
    pytest.param(
        Retry,
        {"retry_statuses": "503"},
        "Retry.retry_statuses: must be a set of status codes in 400..599, got '503'",
        id="retry-statuses-string",
    ),
    pytest.param(
        Retry,
        {"max_retry_after": -1},
        "Retry.max_retry_after: must be >= 0, got -1",
        id="retry-max-retry-after-negative",
    ),
    # Bulkhead
    pytest.param(
        Bulkhead,
        {"max_concurrent": 0},
        "Bulkhead.max_concurrent: must be >= 1, got 0",
        id="bulkhead-zero",
    ),
    pytest.param(
        Bulkhead,
        {"max_concurrent": 2.5},
        "Bulkhead.max_concurrent: must be an integer, got 2.5",
        id="bulkhead-float",
    ),
    pytest.param(
        Bulkhead,
        {"max_wait": -0.5},
        "Bulkhead.max_wait: must be >= 0, got -0.5",
        id="bulkhead-max-wait",
    ),
    # CircuitBreaker
    pytest.param(
        CircuitBreaker,
        {"failure_rate_threshold": 1.5},
        "CircuitBreaker.failure_rate_threshold: must be in (0, 1], got 1.5",
        id="breaker-failure-rate-above-1",
    ),
    pytest.param(
        CircuitBreaker,
        {"failure_rate_threshold": 0},
        "CircuitBreaker.failure_rate_threshold: must be in (0, 1], got 0",
        id="breaker-failure-rate-zero",
    ),
    pytest.param(
        CircuitBreaker,
        {"failure_rate_threshold": NAN},
        "CircuitBreaker.failure_rate_threshold: must be a finite number, got nan",
        id="breaker-failure-rate-nan",
    ),
    pytest.param(
        CircuitBreaker,
        {"failure_rate_threshold": True},
        "CircuitBreaker.failure_rate_threshold: must be a finite number, got True",
        id="breaker-failure-rate-bool",
    ),
    pytest.param(
        CircuitBreaker,
        {"slow_call_rate_threshold": -0.1},
        "CircuitBreaker.slow_call_rate_threshold: must be in (0, 1], got -0.1",
        id="breaker-slow-rate",
    ),
    pytest.param(
        CircuitBreaker,
        {"slow_call_duration": 0},
        "CircuitBreaker.slow_call_duration: must be > 0, got 0",
        id="breaker-slow-duration",
    ),
    pytest.param(
        CircuitBreaker,
        {"window": "sliding"},
        "CircuitBreaker.window: must be 'count' or 'time', got 'sliding'",
        id="breaker-window-kind",
    ),
    pytest.param(
        CircuitBreaker,
        {"window_size": 10.5},
        "CircuitBreaker.window_size: must be an integer, got 10.5",
        id="breaker-count-window-float",
    ),
    pytest.param(
        CircuitBreaker,
        {"window": "time", "window_size": 0},
        "CircuitBreaker.window_size: must be > 0, got 0",
        id="breaker-time-window-zero",
    ),
    pytest.param(
        CircuitBreaker,
        {"minimum_calls": 101},
        "CircuitBreaker.minimum_calls: must be <= window_size (100) for a count window, got 101",
        id="breaker-minimum-calls-above-window",
    ),
    pytest.param(
        CircuitBreaker,
        {"open_duration": 0},
        "CircuitBreaker.open_duration: must be > 0, got 0",
        id="breaker-open-duration",
    ),
    pytest.param(
        CircuitBreaker,
        {"open_duration_multiplier": 0.5},
        "CircuitBreaker.open_duration_multiplier: must be >= 1, got 0.5",
        id="breaker-open-multiplier",
    ),
    pytest.param(
        CircuitBreaker,
        {"max_open_duration": 10.0},
        "CircuitBreaker.max_open_duration: must be >= open_duration (30.0), got 10.0",
        id="breaker-max-open-below-open",
    ),
    pytest.param(
        CircuitBreaker,
        {"max_open_duration": -5},
        "CircuitBreaker.max_open_duration: must be > 0, got -5",
        id="breaker-max-open-negative-one-line",
    ),
    pytest.param(
        CircuitBreaker,
        {"half_open_calls": 0},
        "CircuitBreaker.half_open_calls: must be >= 1, got 0",
        id="breaker-half-open-calls",
    ),
    pytest.param(
        CircuitBreaker,
        {"failure_statuses": [99, 500]},
        "CircuitBreaker.failure_statuses: must be a set of status codes in 100..599, got [99, 500]",
        id="breaker-failure-statuses",
    ),
    pytest.param(
        CircuitBreaker,
        {"record_on": ("boom",)},
        "CircuitBreaker.record_on: must be a tuple of Exception subclasses or a predicate,"
        " got ('boom',)",
        id="breaker-record-on",
    ),
    # RateLimit
    pytest.param(
        RateLimit, {"rate": 0}, "RateLimit.rate: must be > 0, got 0", id="rate-limit-rate-zero"
    ),
    pytest.param(
        RateLimit,
        {"rate": True},
        "RateLimit.rate: must be a finite number, got True",
        id="rate-limit-rate-bool",
    ),
    pytest.param(
        RateLimit,
        {"rate": None},
        "RateLimit.rate: must be a finite number, got None",
        id="rate-limit-rate-none",
    ),
    pytest.param(
        RateLimit, {"rate": 10, "per": 0}, "RateLimit.per: must be > 0, got 0", id="rate-limit-per"
    ),
    pytest.param(
        RateLimit,
        {"rate": 10, "burst": 0.5},
        "RateLimit.burst: must be >= 1, got 0.5",
        id="rate-limit-burst-small",
    ),
    pytest.param(
        RateLimit,
        {"rate": 10, "burst": INF},
        "RateLimit.burst: must be a finite number or None, got inf",
        id="rate-limit-burst-inf",
    ),
    pytest.param(
        RateLimit,
        {"rate": 10, "max_wait": -1},
        "RateLimit.max_wait: must be >= 0, got -1",
        id="rate-limit-max-wait",
    ),
    # Fallback
    pytest.param(
        Fallback,
        {"stale_if_error": 0},
        "Fallback.stale_if_error: must be > 0, got 0",
        id="fallback-stale-zero",
    ),
    pytest.param(
        Fallback,
        {"max_entries": 0},
        "Fallback.max_entries: must be >= 1, got 0",
        id="fallback-max-entries",
    ),
    pytest.param(
        Fallback,
        {"max_bytes": "16MB"},
        "Fallback.max_bytes: must be an integer, got '16MB'",
        id="fallback-max-bytes-string",
    ),
    pytest.param(
        Fallback,
        {"default": "ok"},
        "Fallback.default: must be an httpx.Response or a callable, got 'ok'",
        id="fallback-default-string",
    ),
    # Pool
    pytest.param(
        Pool,
        {"max_connections": 0},
        "Pool.max_connections: must be >= 1, got 0",
        id="pool-max-connections",
    ),
    pytest.param(
        Pool,
        {"max_keepalive": -1},
        "Pool.max_keepalive: must be >= 0, got -1",
        id="pool-max-keepalive",
    ),
    pytest.param(
        Pool,
        {"max_connections": 10, "max_keepalive": 20},
        "Pool.max_keepalive: must be <= max_connections (10), got 20",
        id="pool-keepalive-above-connections",
    ),
    pytest.param(
        Pool,
        {"keepalive_expiry": -1},
        "Pool.keepalive_expiry: must be >= 0, got -1",
        id="pool-keepalive-expiry",
    ),
    # Policy
    pytest.param(
        Policy,
        {"timeouts": None},
        "Policy.timeouts: must be a Timeouts, got None",
        id="policy-timeouts-none",
    ),
    pytest.param(
        Policy,
        {"retry": False},
        "Policy.retry: must be a Retry or None, got False",
        id="policy-retry-false",
    ),
    pytest.param(
        Policy,
        {"breaker": {"failure_rate_threshold": 0.5}},
        "Policy.breaker: must be a CircuitBreaker or None, got {'failure_rate_threshold': 0.5}",
        id="policy-breaker-dict",
    ),
    pytest.param(
        Policy, {"pool": None}, "Policy.pool: must be a Pool, got None", id="policy-pool-none"
    ),
    pytest.param(
        Policy,
        {"forward_deadline": 1},
        "Policy.forward_deadline: must be a boolean, got 1",
        id="policy-forward-deadline-int",
    ),
]


@pytest.mark.parametrize(("cls", "kwargs", "expected"), BAD_OBJECTS)
def test_direct_construction_rejects(cls: type, kwargs: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        cls(**kwargs)
    assert problems_of(excinfo) == (expected,)
    assert str(excinfo.value) == expected


def test_direct_construction_reports_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as excinfo:
        CircuitBreaker(
            failure_rate_threshold=1.5,
            window="count",
            window_size=50,
            minimum_calls=200,
            open_duration=-1,
            max_open_duration=10.0,
            half_open_calls=0,
        )
    assert problems_of(excinfo) == (
        "CircuitBreaker.failure_rate_threshold: must be in (0, 1], got 1.5",
        "CircuitBreaker.minimum_calls: must be <= window_size (50) for a count window, got 200",
        "CircuitBreaker.open_duration: must be > 0, got -1",
        "CircuitBreaker.half_open_calls: must be >= 1, got 0",
    )


def test_timeouts_report_every_field() -> None:
    with pytest.raises(ConfigError) as excinfo:
        Timeouts(connect=0, read=-1, write="1", pool=NAN, attempt=INF, total=False)  # type: ignore[arg-type]
    assert problems_of(excinfo) == (
        "Timeouts.connect: must be > 0, got 0",
        "Timeouts.read: must be > 0, got -1",
        "Timeouts.write: must be a finite number of seconds or None, got '1'",
        "Timeouts.pool: must be a finite number of seconds or None, got nan",
        "Timeouts.attempt: must be a finite number of seconds or None, got inf",
        "Timeouts.total: must be a finite number of seconds or None, got False",
    )


def test_missing_required_argument_in_code_is_a_type_error() -> None:
    # Leaving out a required keyword is a programming error, caught by Python (and mypy).
    with pytest.raises(TypeError, match="rate"):
        RateLimit()  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "cls", [Timeouts, Backoff, RetryBudget, Retry, Bulkhead, CircuitBreaker, Fallback, Pool, Policy]
)
def test_keyword_only(cls: type) -> None:
    with pytest.raises(TypeError):
        cls(1)


# ---------------------------------------------------------------------------
# Frozen, stateless, equal by value

INSTANCES = [
    pytest.param(Timeouts(), "total", id="Timeouts"),
    pytest.param(Backoff(), "initial", id="Backoff"),
    pytest.param(RetryBudget(), "ratio", id="RetryBudget"),
    pytest.param(Retry(), "attempts", id="Retry"),
    pytest.param(Bulkhead(), "max_concurrent", id="Bulkhead"),
    pytest.param(CircuitBreaker(), "failure_rate_threshold", id="CircuitBreaker"),
    pytest.param(RateLimit(rate=5), "rate", id="RateLimit"),
    pytest.param(Fallback(), "stale_if_error", id="Fallback"),
    pytest.param(Pool(), "max_connections", id="Pool"),
    pytest.param(Policy(), "retry", id="Policy"),
    pytest.param(DependencySpec(name="x", policy=Policy()), "base_url", id="DependencySpec"),
    pytest.param(Config(defaults=Policy(), dependencies={}), "defaults", id="Config"),
]


@pytest.mark.parametrize(("obj", "field_name"), INSTANCES)
def test_frozen(obj: object, field_name: str) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, field_name, None)
    # A new attribute cannot be added either (slots). CPython 3.11 raises TypeError
    # here instead of FrozenInstanceError (a known slots=True quirk).
    with pytest.raises((AttributeError, TypeError)):
        obj.state = 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(("obj", "field_name"), INSTANCES)
def test_no_instance_dict(obj: object, field_name: str) -> None:
    # Slots only: nothing can be stashed on a config object at run time.
    assert not hasattr(obj, "__dict__")
    assert hasattr(obj, field_name)


def test_equal_by_value() -> None:
    assert Policy() == Policy()
    assert hash(Policy()) == hash(Policy())
    assert Timeouts(total=5) == Timeouts(total=5.0)
    assert Policy(retry=Retry(attempts=2)) == Policy(retry=Retry(attempts=2))
    assert Policy(retry=Retry(attempts=2)) != Policy()
    assert Policy(retry=None) != Policy()
    assert CircuitBreaker(window_size=100) == CircuitBreaker()
    assert Retry(retry_statuses=[503, 502]) == Retry(retry_statuses=frozenset({502, 503}))  # type: ignore[arg-type]
    assert RateLimit(rate=10) == RateLimit(rate=10, burst=10.0)


# ---------------------------------------------------------------------------
# Defaults and normalisation


def test_default_policy_is_sane() -> None:
    policy = Policy()
    assert policy.timeouts == Timeouts()
    assert policy.retry == Retry()
    assert policy.breaker == CircuitBreaker()
    assert policy.pool == Pool()
    assert policy.bulkhead is None
    assert policy.rate_limit is None
    assert policy.fallback is None
    assert policy.forward_deadline is False


def test_default_values() -> None:
    t = Timeouts()
    assert (t.connect, t.read, t.write, t.pool, t.attempt, t.total) == (
        5.0,
        10.0,
        10.0,
        5.0,
        10.0,
        30.0,
    )
    r = Retry()
    assert r.attempts == 3
    assert r.backoff == Backoff(initial=0.1, maximum=10.0, multiplier=2.0, jitter=True)
    assert r.budget == RetryBudget(ratio=0.2, min_per_second=10.0, window=10.0)
    assert r.retry_on == (TimeoutError, ConnectionError)
    assert r.retry_statuses == frozenset({408, 429, 500, 502, 503, 504})
    assert r.max_retry_after == 60.0
    b = CircuitBreaker()
    assert b.failure_rate_threshold == 0.5
    assert b.slow_call_rate_threshold == 1.0
    assert b.minimum_calls == 20
    assert b.open_duration == 30.0
    assert b.half_open_calls == 5
    assert b.failure_statuses == frozenset(range(500, 600))
    assert b.record_on == (Exception,)
    assert b.ignore_on == ()
    assert Bulkhead() == Bulkhead(max_concurrent=25, max_wait=0.0)
    assert Pool() == Pool(max_connections=100, max_keepalive=20, keepalive_expiry=5.0)
    assert Fallback() == Fallback(stale_if_error=None, max_entries=1024, max_bytes=16 * 1024 * 1024)
    # None turns a timeout off.
    assert Timeouts(total=None).total is None


def test_status_lists_become_frozensets() -> None:
    retry = Retry(retry_statuses=[503, 502, 503])  # type: ignore[arg-type]
    assert retry.retry_statuses == frozenset({502, 503})
    assert isinstance(retry.retry_statuses, frozenset)
    breaker = CircuitBreaker(failure_statuses=range(500, 505))  # type: ignore[arg-type]
    assert breaker.failure_statuses == frozenset({500, 501, 502, 503, 504})
    assert isinstance(breaker.failure_statuses, frozenset)
    assert Retry(retry_statuses=()).retry_statuses == frozenset()  # type: ignore[arg-type]


def test_window_size_defaults_to_the_window_kind() -> None:
    assert CircuitBreaker().window_size == 100
    assert CircuitBreaker(window="count").window_size == 100
    assert CircuitBreaker(window="time").window_size == 60.0
    assert CircuitBreaker(window="count", window_size=10, minimum_calls=5).window_size == 10
    assert CircuitBreaker(window="time", window_size=2.5).window_size == 2.5
    # A time window is not bounded by a count: minimum_calls may exceed it.
    assert CircuitBreaker(window="time", window_size=5, minimum_calls=50).minimum_calls == 50


def test_rate_limit_burst_defaults_to_rate_at_least_one() -> None:
    assert RateLimit(rate=10).burst == 10.0
    assert RateLimit(rate=0.5, per=1).burst == 1.0
    assert RateLimit(rate=10, burst=3).burst == 3


def test_fallback_accepts_a_response_or_a_callable() -> None:
    response = httpx.Response(200, json={"ok": True})
    assert Fallback(default=response).default is response

    def answer(request: httpx.Request, error: BaseException) -> httpx.Response:
        return response

    assert Fallback(default=answer).default is answer


def test_predicates_are_accepted_as_matchers() -> None:
    def is_transient(exc: Exception) -> bool:
        return isinstance(exc, OSError)

    assert Retry(retry_on=is_transient).retry_on is is_transient
    assert CircuitBreaker(ignore_on=(ValueError,)).ignore_on == (ValueError,)


# ---------------------------------------------------------------------------
# Policy.from_mapping


def test_from_mapping_empty_is_the_default_policy() -> None:
    assert Policy.from_mapping({}) == Policy()


def test_from_mapping_builds_every_part() -> None:
    policy = Policy.from_mapping(
        {
            "timeouts": {"connect": 1, "total": None},
            "retry": {
                "attempts": 5,
                "backoff": {"initial": 0.2, "jitter": False},
                "budget": False,
                "retry_statuses": [503],
                "max_retry_after": 5,
            },
            "bulkhead": {"max_concurrent": 4, "max_wait": 0.5},
            "breaker": {"window": "time", "minimum_calls": 3},
            "rate_limit": {"rate": 100, "per": 60},
            "fallback": {"stale_if_error": 120, "max_entries": 10},
            "pool": {"max_connections": 8, "max_keepalive": 8},
            "forward_deadline": True,
        }
    )
    assert policy == Policy(
        timeouts=Timeouts(connect=1, total=None),
        retry=Retry(
            attempts=5,
            backoff=Backoff(initial=0.2, jitter=False),
            budget=None,
            retry_statuses=frozenset({503}),
            max_retry_after=5,
        ),
        bulkhead=Bulkhead(max_concurrent=4, max_wait=0.5),
        breaker=CircuitBreaker(window="time", window_size=60.0, minimum_calls=3),
        rate_limit=RateLimit(rate=100, per=60),
        fallback=Fallback(stale_if_error=120, max_entries=10),
        pool=Pool(max_connections=8, max_keepalive=8),
        forward_deadline=True,
    )


def test_from_mapping_false_turns_a_part_off() -> None:
    policy = Policy.from_mapping({"retry": False, "breaker": False, "bulkhead": False})
    assert policy.retry is None
    assert policy.breaker is None
    assert policy.bulkhead is None
    assert policy.timeouts == Timeouts()


def test_from_mapping_fallback_default_builds_a_response() -> None:
    policy = Policy.from_mapping(
        {"fallback": {"default": {"status": 503, "headers": {"retry-after": "5"}, "text": "busy"}}}
    )
    assert policy.fallback is not None
    response = policy.fallback.default
    assert isinstance(response, httpx.Response)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.text == "busy"


BAD_MAPPINGS = [
    pytest.param(
        {"retry": {"backoff": {"multiplier": 0.5}}},
        ("retry.backoff.multiplier: must be >= 1, got 0.5",),
        id="retry-backoff-multiplier",
    ),
    pytest.param(
        {"retry": {"budget": {"ratio": -0.1}}},
        ("retry.budget.ratio: must be in [0, 10], got -0.1",),
        id="retry-budget-ratio",
    ),
    pytest.param(
        {"retry": {"attempts": "3"}},
        ("retry.attempts: must be an integer, got '3'",),
        id="string-for-integer",
    ),
    pytest.param(
        {"retry": {"attempts": True}},
        ("retry.attempts: must be an integer, got True",),
        id="true-is-not-1",
    ),
    pytest.param(
        {"bulkhead": {"max_concurrent": True}},
        ("bulkhead.max_concurrent: must be an integer, got True",),
        id="true-is-not-1-bulkhead",
    ),
    pytest.param(
        {"breaker": {"failure_rate_threshold": True}},
        ("breaker.failure_rate_threshold: must be a finite number, got True",),
        id="true-is-not-1.0",
    ),
    pytest.param(
        {"timeouts": {"total": "30s"}},
        ("timeouts.total: must be a finite number of seconds or None, got '30s'",),
        id="string-for-seconds",
    ),
    pytest.param(
        {"timeouts": {"connect": NAN}},
        ("timeouts.connect: must be a finite number of seconds or None, got nan",),
        id="nan",
    ),
    pytest.param(
        {"breaker": {"open_duration": INF}},
        ("breaker.open_duration: must be a finite number of seconds, got inf",),
        id="inf",
    ),
    pytest.param(
        {"rate_limit": {"per": 2}},
        ("rate_limit.rate: must be set, got nothing",),
        id="rate-limit-without-rate",
    ),
    pytest.param(
        {"rate_limit": {"per": 0, "burst": 0}},
        (
            "rate_limit.rate: must be set, got nothing",
            "rate_limit.per: must be > 0, got 0",
            "rate_limit.burst: must be >= 1, got 0",
        ),
        id="rate-limit-without-rate-and-more",
    ),
    pytest.param(
        {"rate_limit": {"rate": "100/s"}},
        ("rate_limit.rate: must be a finite number, got '100/s'",),
        id="rate-limit-rate-string",
    ),
    pytest.param(
        {"retry": {"retry_statuses": [500, 600]}},
        ("retry.retry_statuses: must be a set of status codes in 400..599, got [500, 600]",),
        id="retry-statuses-out-of-range",
    ),
    pytest.param(
        {"breaker": {"window": "time", "window_size": 0}},
        ("breaker.window_size: must be > 0, got 0",),
        id="breaker-time-window-size",
    ),
    pytest.param(
        {"breaker": {"window_size": 10}},
        ("breaker.minimum_calls: must be <= window_size (10) for a count window, got 20",),
        id="breaker-window-smaller-than-default-minimum-calls",
    ),
    pytest.param(
        {"forward_deadline": "yes"},
        ("forward_deadline: must be a boolean, got 'yes'",),
        id="forward-deadline-string",
    ),
    # Wrong shapes for whole parts.
    pytest.param(
        {"retry": "off"},
        ("retry: must be a table or false, got 'off'",),
        id="retry-string",
    ),
    pytest.param(
        {"retry": True},
        ("retry: must be a table or false, got True",),
        id="retry-true",
    ),
    pytest.param(
        {"timeouts": False},
        ("timeouts: must be a table, got False",),
        id="timeouts-cannot-be-off",
    ),
    pytest.param(
        {"pool": 10},
        ("pool: must be a table, got 10",),
        id="pool-number",
    ),
    pytest.param(
        {"retry": {"backoff": False}},
        ("retry.backoff: must be a table, got False",),
        id="backoff-cannot-be-off",
    ),
    pytest.param(
        {"retry": {"budget": 0.2}},
        ("retry.budget: must be a table or false, got 0.2",),
        id="budget-number",
    ),
    # Unknown keys at every level.
    pytest.param(
        {"retries": {"attempts": 2}},
        ("retries: unknown key, got {'attempts': 2}",),
        id="unknown-part",
    ),
    pytest.param(
        {"retry": {"tries": 2}},
        ("retry.tries: unknown key, got 2",),
        id="unknown-retry-key",
    ),
    pytest.param(
        {"retry": {"backoff": {"factor": 2}}},
        ("retry.backoff.factor: unknown key, got 2",),
        id="unknown-backoff-key",
    ),
    pytest.param(
        {"retry": {"budget": {"percent": 20}}},
        ("retry.budget.percent: unknown key, got 20",),
        id="unknown-budget-key",
    ),
    pytest.param(
        {"retry": {"retry_on": ["TimeoutError"]}},
        ("retry.retry_on: unknown key, got ['TimeoutError']",),
        id="code-only-key-retry-on",
    ),
    pytest.param(
        {"breaker": {"record_on": ["Exception"]}},
        ("breaker.record_on: unknown key, got ['Exception']",),
        id="code-only-key-record-on",
    ),
    pytest.param(
        {"fallback": {"default": {"status": 200, "body": "x"}}},
        ("fallback.default.body: unknown key, got 'x'",),
        id="unknown-default-response-key",
    ),
    # The fallback's default response table.
    pytest.param(
        {"fallback": {"default": {"status": 99}}},
        ("fallback.default.status: must be a status code in 100..599, got 99",),
        id="default-status-range",
    ),
    pytest.param(
        {"fallback": {"default": {"status": "200"}}},
        ("fallback.default.status: must be a status code in 100..599, got '200'",),
        id="default-status-string",
    ),
    pytest.param(
        {"fallback": {"default": {"headers": {"x-cache": 1}}}},
        ("fallback.default.headers: must be a table of strings, got {'x-cache': 1}",),
        id="default-headers",
    ),
    pytest.param(
        {"fallback": {"default": {"json": {}, "text": "x"}}},
        ("fallback.default.text: set json or text, not both, got 'x'",),
        id="default-json-and-text",
    ),
    pytest.param(
        {"fallback": {"default": "ok"}},
        ("fallback.default: must be a table of status, headers, json or text, got 'ok'",),
        id="default-string",
    ),
    # Several problems in one part, and across parts: all of them, at once.
    pytest.param(
        {
            "retry": {
                "attempts": 0,
                "backoff": {"initial": -1, "multiplier": 0.5},
                "budget": {"ratio": 20},
                "tries": 3,
            },
            "breaker": {"failure_rate_threshold": 1.5, "bogus": 1},
            "unknown": True,
        },
        (
            "retry.backoff.initial: must be >= 0, got -1",
            "retry.backoff.multiplier: must be >= 1, got 0.5",
            "retry.budget.ratio: must be in [0, 10], got 20",
            "retry.tries: unknown key, got 3",
            "retry.attempts: must be >= 1, got 0",
            "breaker.bogus: unknown key, got 1",
            "breaker.failure_rate_threshold: must be in (0, 1], got 1.5",
            "unknown: unknown key, got True",
        ),
        id="many-problems",
    ),
]


@pytest.mark.parametrize(("data", "expected"), BAD_MAPPINGS)
def test_from_mapping_rejects(data: dict[str, Any], expected: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Policy.from_mapping(data)
    assert problems_of(excinfo) == expected


def test_from_mapping_path_prefixes_every_key() -> None:
    with pytest.raises(ConfigError) as excinfo:
        Policy.from_mapping(
            {"breaker": {"failure_rate_threshold": 1.5}, "nope": 1}, path="dependencies.payments"
        )
    assert problems_of(excinfo) == (
        "dependencies.payments.breaker.failure_rate_threshold: must be in (0, 1], got 1.5",
        "dependencies.payments.nope: unknown key, got 1",
    )


def test_from_mapping_not_a_table() -> None:
    with pytest.raises(ConfigError) as excinfo:
        Policy.from_mapping([("retry", False)])  # type: ignore[arg-type]
    assert problems_of(excinfo) == ("<policy>: must be a table, got [('retry', False)]",)


# ---------------------------------------------------------------------------
# load_config: whole TOML files

FULL_TOML = """\
# Every dependency inherits [defaults], key by key.
[defaults]
forward_deadline = true

[defaults.timeouts]
connect = 2.0
total = 20.0

[defaults.retry]
attempts = 4
retry_statuses = [502, 503, 504]

[defaults.retry.backoff]
initial = 0.05
maximum = 2.0

[defaults.retry.budget]
ratio = 0.1

[defaults.breaker]
failure_rate_threshold = 0.4
minimum_calls = 10
window_size = 50

[defaults.pool]
max_connections = 50

[dependencies.payments]
endpoints = ["https://payments-a.internal", "https://payments-b.internal"]
headers = { "x-client" = "checkout" }
verify = true
http2 = true
auth = ["checkout", "s3cret"]

[dependencies.payments.breaker]
failure_rate_threshold = 0.25

[dependencies.payments.retry.backoff]
maximum = 5.0

[dependencies.payments.bulkhead]
max_concurrent = 10

[dependencies.catalog]
base_url = "https://catalog.internal"

[dependencies.catalog.fallback]
stale_if_error = 300
default = { status = 200, json = { items = [], stale = true } }

[dependencies.notifications]
base_url = "http://notifications.internal:8080"
retry = false
breaker = false
timeouts = { connect = 0.5, attempt = 1.0, total = 2.0 }
rate_limit = { rate = 50, per = 1.0 }
forward_deadline = false
"""


def test_load_full_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL_TOML))
    assert isinstance(config, Config)

    defaults = Policy(
        timeouts=Timeouts(connect=2.0, total=20.0),
        retry=Retry(
            attempts=4,
            retry_statuses=frozenset({502, 503, 504}),
            backoff=Backoff(initial=0.05, maximum=2.0),
            budget=RetryBudget(ratio=0.1),
        ),
        breaker=CircuitBreaker(failure_rate_threshold=0.4, minimum_calls=10, window_size=50),
        pool=Pool(max_connections=50),
        forward_deadline=True,
    )
    assert config.defaults == defaults
    assert list(config.dependencies) == ["payments", "catalog", "notifications"]

    payments = config.dependencies["payments"]
    assert isinstance(payments, DependencySpec)
    assert payments.name == "payments"
    assert payments.base_url is None
    assert payments.endpoints == ("https://payments-a.internal", "https://payments-b.internal")
    assert dict(payments.httpx_options) == {
        "headers": {"x-client": "checkout"},
        "verify": True,
        "http2": True,
        "auth": ("checkout", "s3cret"),
    }
    # One breaker key overridden; minimum_calls and window_size inherited.
    assert payments.policy.breaker == CircuitBreaker(
        failure_rate_threshold=0.25, minimum_calls=10, window_size=50
    )
    # One nested backoff key overridden; initial, attempts, budget inherited.
    assert payments.policy.retry == Retry(
        attempts=4,
        retry_statuses=frozenset({502, 503, 504}),
        backoff=Backoff(initial=0.05, maximum=5.0),
        budget=RetryBudget(ratio=0.1),
    )
    assert payments.policy.bulkhead == Bulkhead(max_concurrent=10)
    assert payments.policy.timeouts == defaults.timeouts
    assert payments.policy.pool == defaults.pool
    assert payments.policy.forward_deadline is True

    catalog = config.dependencies["catalog"]
    assert catalog.base_url == "https://catalog.internal"
    assert catalog.endpoints == ()
    assert dict(catalog.httpx_options) == {}
    assert catalog.policy.retry == defaults.retry
    assert catalog.policy.breaker == defaults.breaker
    fallback = catalog.policy.fallback
    assert fallback is not None
    assert fallback.stale_if_error == 300
    response = fallback.default
    assert isinstance(response, httpx.Response)
    assert response.status_code == 200
    assert response.json() == {"items": [], "stale": True}
    assert response.headers["content-type"] == "application/json"

    notifications = config.dependencies["notifications"]
    assert notifications.policy.retry is None
    assert notifications.policy.breaker is None
    assert notifications.policy.rate_limit == RateLimit(rate=50, per=1.0)
    # A table given inline merges key by key too: write and pool come from defaults.
    assert notifications.policy.timeouts == Timeouts(connect=0.5, attempt=1.0, total=2.0)
    assert notifications.policy.forward_deadline is False


def test_loaded_config_is_read_only(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL_TOML))
    with pytest.raises(TypeError):
        config.dependencies["other"] = config.dependencies["catalog"]  # type: ignore[index]
    with pytest.raises(TypeError):
        config.dependencies["payments"].httpx_options["verify"] = False  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dependencies["payments"].policy.breaker.window_size = 5  # type: ignore[misc, union-attr]


def test_load_config_takes_str_and_path(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_TOML)
    from_str, from_path = load_config(str(path)), load_config(path)
    assert from_str.defaults == from_path.defaults
    assert from_str.dependencies["payments"] == from_path.dependencies["payments"]
    # (catalog differs only by its default httpx.Response, which compares by identity)


def test_load_config_equals_config_from_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_TOML)
    from_mapping = Config.from_mapping(tomllib.loads(FULL_TOML))
    loaded = load_config(path)
    assert loaded.defaults == from_mapping.defaults
    for name, spec in loaded.dependencies.items():
        other = from_mapping.dependencies[name]
        assert spec.policy.breaker == other.policy.breaker
        assert spec.policy.retry == other.policy.retry
        assert spec.endpoints == other.endpoints


def test_load_empty_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.defaults == Policy()
    assert dict(config.dependencies) == {}


def test_dependency_without_defaults_table(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """\
            [dependencies.search]
            base_url = "https://search.internal"
            """,
        )
    )
    assert config.defaults == Policy()
    assert config.dependencies["search"].policy == Policy()


def test_defaults_off_and_dependency_back_on(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """\
            [defaults]
            retry = false
            breaker = false

            [dependencies.ledger]
            base_url = "https://ledger.internal"
            retry = { attempts = 2 }

            [dependencies.audit]
            base_url = "https://audit.internal"
            """,
        )
    )
    assert config.defaults.retry is None
    assert config.dependencies["ledger"].policy.retry == Retry(attempts=2)
    assert config.dependencies["ledger"].policy.breaker is None
    assert config.dependencies["audit"].policy.retry is None


def test_budget_false_in_a_dependency(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """\
            [defaults.retry.budget]
            ratio = 0.5

            [dependencies.a]
            base_url = "https://a.internal"
            retry.budget = false
            """,
        )
    )
    assert config.defaults.retry == Retry(budget=RetryBudget(ratio=0.5))
    assert config.dependencies["a"].policy.retry == Retry(budget=None)


def test_fallback_default_response_is_replaced_not_merged(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """\
            [defaults.fallback]
            default = { status = 503, headers = { "retry-after" = "1" }, text = "busy" }

            [dependencies.a]
            base_url = "https://a.internal"
            fallback.default = { status = 200, json = [] }
            """,
        )
    )
    default = config.defaults.fallback.default  # type: ignore[union-attr]
    assert isinstance(default, httpx.Response)
    assert (default.status_code, default.text) == (503, "busy")
    override = config.dependencies["a"].policy.fallback.default  # type: ignore[union-attr]
    assert isinstance(override, httpx.Response)
    assert override.status_code == 200
    assert override.json() == []
    assert "retry-after" not in override.headers


BAD_DOCUMENTS = [
    pytest.param(
        """\
        [dependencies.payments]
        base_url = "https://payments.internal"
        breaker.failure_rate_threshold = 1.5
        """,
        ("dependencies.payments.breaker.failure_rate_threshold: must be in (0, 1], got 1.5",),
        id="dependency-breaker",
    ),
    pytest.param(
        """\
        [defaults.retry.backoff]
        multiplier = 0.5
        """,
        ("defaults.retry.backoff.multiplier: must be >= 1, got 0.5",),
        id="defaults-retry-backoff-multiplier",
    ),
    pytest.param(
        """\
        [dependencies.a]
        base_url = "https://a.internal"
        [dependencies.a.retry.budget]
        ratio = "20%"
        """,
        ("dependencies.a.retry.budget.ratio: must be a finite number, got '20%'",),
        id="dependency-retry-budget-ratio",
    ),
    pytest.param(
        """\
        [dependencies.payments]
        endpoints = ["https://a.internal", "ftp://b.internal", 3]
        """,
        (
            "dependencies.payments.endpoints[1]: must be an http:// or https:// URL, got 'ftp://b.internal'",
            "dependencies.payments.endpoints[2]: must be an http:// or https:// URL, got 3",
        ),
        id="endpoints-items",
    ),
    pytest.param(
        """\
        [dependencies.payments]
        endpoints = []
        """,
        ("dependencies.payments.endpoints: must be a non-empty list of URLs, got []",),
        id="endpoints-empty",
    ),
    pytest.param(
        """\
        [dependencies.payments]
        endpoints = "https://a.internal"
        """,
        (
            "dependencies.payments.endpoints: must be a non-empty list of URLs, got 'https://a.internal'",
        ),
        id="endpoints-string",
    ),
    pytest.param(
        """\
        [dependencies.payments]
        base_url = "https://a.internal"
        endpoints = ["https://b.internal"]
        """,
        (
            "dependencies.payments.endpoints: set base_url or endpoints, not both, got ['https://b.internal']",
        ),
        id="base-url-and-endpoints",
    ),
    pytest.param(
        """\
        [dependencies.payments]
        base_url = "payments.internal:8080"
        """,
        (
            "dependencies.payments.base_url: must be an http:// or https:// URL, got 'payments.internal:8080'",
        ),
        id="base-url-scheme",
    ),
    # Unknown keys and tables at every level.
    pytest.param(
        """\
        [dependency.payments]
        base_url = "https://a.internal"
        """,
        ("dependency: unknown key, got {'payments': {'base_url': 'https://a.internal'}}",),
        id="unknown-top-level-table",
    ),
    pytest.param(
        """\
        [defaults]
        timeout = 5
        """,
        ("defaults.timeout: unknown key, got 5",),
        id="unknown-defaults-key",
    ),
    pytest.param(
        """\
        [defaults.circuit_breaker]
        failure_rate_threshold = 0.5
        """,
        ("defaults.circuit_breaker: unknown key, got {'failure_rate_threshold': 0.5}",),
        id="unknown-defaults-table",
    ),
    pytest.param(
        """\
        [dependencies.a]
        base_url = "https://a.internal"
        timeout = 5
        """,
        ("dependencies.a.timeout: unknown key, got 5",),
        id="unknown-dependency-key",
    ),
    pytest.param(
        """\
        [dependencies.a]
        base_url = "https://a.internal"
        [dependencies.a.bulkhead]
        max_concurrent = 5
        queue = 10
        """,
        ("dependencies.a.bulkhead.queue: unknown key, got 10",),
        id="unknown-part-key",
    ),
    pytest.param(
        """\
        [dependencies.a]
        base_url = "https://a.internal"
        [dependencies.a.retry.backoff]
        jitter_ratio = 0.5
        """,
        ("dependencies.a.retry.backoff.jitter_ratio: unknown key, got 0.5",),
        id="unknown-nested-key",
    ),
    # Wrong types, booleans for numbers, NaN and inf (TOML has them).
    pytest.param(
        """\
        [defaults.timeouts]
        connect = "5"
        total = inf
        read = nan
        """,
        (
            "defaults.timeouts.connect: must be a finite number of seconds or None, got '5'",
            "defaults.timeouts.read: must be a finite number of seconds or None, got nan",
            "defaults.timeouts.total: must be a finite number of seconds or None, got inf",
        ),
        id="timeouts-string-inf-nan",
    ),
    pytest.param(
        """\
        [defaults.retry]
        attempts = true
        max_retry_after = -inf
        """,
        (
            "defaults.retry.attempts: must be an integer, got True",
            "defaults.retry.max_retry_after: must be a finite number of seconds, got -inf",
        ),
        id="retry-bool-and-negative-inf",
    ),
    pytest.param(
        """\
        [defaults.breaker]
        failure_rate_threshold = nan
        window = "time"
        window_size = true
        """,
        (
            "defaults.breaker.failure_rate_threshold: must be a finite number, got nan",
            "defaults.breaker.window_size: must be a finite number of seconds, got True",
        ),
        id="breaker-nan-and-bool",
    ),
    pytest.param(
        """\
        [defaults]
        forward_deadline = 1
        """,
        ("defaults.forward_deadline: must be a boolean, got 1",),
        id="forward-deadline-int",
    ),
    pytest.param(
        """\
        [dependencies.a]
        base_url = "https://a.internal"
        rate_limit = { per = 60 }
        """,
        ("dependencies.a.rate_limit.rate: must be set, got nothing",),
        id="rate-limit-without-rate",
    ),
    pytest.param(
        """\
        [dependencies.a]
        base_url = "https://a.internal"
        retry = "no"
        """,
        ("dependencies.a.retry: must be a table or false, got 'no'",),
        id="retry-string",
    ),
    # httpx options.
    pytest.param(
        """\
        [dependencies.a]
        base_url = "https://a.internal"
        headers = { "x-api-key" = 1234 }
        verify = 0
        max_redirects = true
        auth = ["user-only"]
        http2 = "yes"
        cert = ["a.pem"]
        """,
        (
            "dependencies.a.headers: must be a table of strings, got [secret]",  # never the value
            "dependencies.a.verify: must be a boolean or a CA bundle path, got 0",
            "dependencies.a.max_redirects: must be an integer >= 0, got True",
            "dependencies.a.auth: must be a list [username, password], got [secret]",
            "dependencies.a.http2: must be a boolean, got 'yes'",
            "dependencies.a.cert: must be a path or a list [certfile, keyfile]"
            " or [certfile, keyfile, password], got ['a.pem']",
        ),
        id="httpx-options",
    ),
    # Wrong shapes of whole tables.
    pytest.param(
        """\
        defaults = 5
        """,
        ("defaults: must be a table, got 5",),
        id="defaults-not-a-table",
    ),
    pytest.param(
        """\
        dependencies = ["payments"]
        """,
        ("dependencies: must be a table, got ['payments']",),
        id="dependencies-not-a-table",
    ),
    pytest.param(
        """\
        [dependencies]
        payments = "https://payments.internal"
        """,
        ("dependencies.payments: must be a table, got 'https://payments.internal'",),
        id="dependency-not-a-table",
    ),
    # A problem in [defaults] is reported once, not again for every dependency
    # that inherits it; a dependency's own bad value is reported under its name.
    pytest.param(
        """\
        [defaults.breaker]
        failure_rate_threshold = 1.5
        [dependencies.a]
        base_url = "https://a.internal"
        [dependencies.b]
        base_url = "https://b.internal"
        breaker.failure_rate_threshold = 2.0
        [dependencies.c]
        base_url = "https://c.internal"
        breaker = false
        """,
        (
            "defaults.breaker.failure_rate_threshold: must be in (0, 1], got 1.5",
            "dependencies.b.breaker.failure_rate_threshold: must be in (0, 1], got 2.0",
        ),
        id="defaults-problem-reported-once",
    ),
    pytest.param(
        """\
        [defaults.breaker]
        minimum_calls = 50
        [dependencies.a]
        base_url = "https://a.internal"
        breaker.window_size = 20
        """,
        (
            "dependencies.a.breaker.minimum_calls: must be <= window_size (20) for a count window, got 50",
        ),
        id="merged-cross-field",
    ),
    # Everything at once.
    pytest.param(
        """\
        version = 2

        [defaults.retry]
        attempts = 0

        [dependencies.payments]
        endpoints = ["https://a.internal", "tcp://b.internal"]
        timeout = 3
        breaker = { failure_rate_threshold = 1.5, half_open_calls = 0 }
        bulkhead = { max_concurrent = "ten" }

        [dependencies.catalog]
        base_url = "https://catalog.internal"
        fallback = { stale_if_error = -1, default = { status = 700 } }
        rate_limit = { burst = 5 }
        """,
        (
            "version: unknown key, got 2",
            "defaults.retry.attempts: must be >= 1, got 0",
            "dependencies.payments.timeout: unknown key, got 3",
            "dependencies.payments.endpoints[1]: must be an http:// or https:// URL, got 'tcp://b.internal'",
            "dependencies.payments.breaker.failure_rate_threshold: must be in (0, 1], got 1.5",
            "dependencies.payments.breaker.half_open_calls: must be >= 1, got 0",
            "dependencies.payments.bulkhead.max_concurrent: must be an integer, got 'ten'",
            "dependencies.catalog.fallback.default.status: must be a status code in 100..599, got 700",
            "dependencies.catalog.fallback.stale_if_error: must be > 0, got -1",
            "dependencies.catalog.rate_limit.rate: must be set, got nothing",
        ),
        id="everything-at-once",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_DOCUMENTS)
def test_load_config_rejects(tmp_path: Path, text: str, expected: tuple[str, ...]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert problems_of(excinfo) == expected
    # The same document as plain data gives the same problems.
    with pytest.raises(ConfigError) as excinfo:
        Config.from_mapping(tomllib.loads(textwrap.dedent(text)))
    assert excinfo.value.problems == expected


def test_load_config_invalid_toml(tmp_path: Path) -> None:
    text = "[defaults\nretry = false\n"
    path = write(tmp_path, text)
    with pytest.raises(tomllib.TOMLDecodeError) as parse_error:
        tomllib.loads(text)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert excinfo.value.problems == (f"{path}: not valid TOML ({parse_error.value})",)
    assert isinstance(excinfo.value.__cause__, tomllib.TOMLDecodeError)


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "absent.toml")


def test_config_from_mapping_not_a_table() -> None:
    with pytest.raises(ConfigError) as excinfo:
        Config.from_mapping(["defaults"])  # type: ignore[arg-type]
    assert problems_of(excinfo) == ("<config>: must be a table, got ['defaults']",)


def test_problem_values_are_reprs() -> None:
    # Values are shown as Python reprs, so a string "5" and a number 5 are told apart.
    with pytest.raises(ConfigError) as excinfo:
        Policy.from_mapping({"bulkhead": {"max_concurrent": "5", "max_wait": "0"}})
    assert problems_of(excinfo) == (
        "bulkhead.max_concurrent: must be an integer, got '5'",
        "bulkhead.max_wait: must be a finite number of seconds, got '0'",
    )


# ---------------------------------------------------------------------------
# docs/configuration.md: its examples load, and its pasted error output is real

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def doc_blocks() -> list[tuple[str, str, str]]:
    """(language, fence line rest, body) of every fenced block of the page."""
    if not DOCS.exists():
        pytest.skip("docs/configuration.md is not here")
    return FENCE.findall(DOCS.read_text(encoding="utf-8"))


def doc_block(lang: str, title: str) -> str:
    (body,) = [b for la, meta, b in doc_blocks() if la == lang and f'title="{title}"' in meta]
    return body


def test_docs_example_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, doc_block("toml", "seawall.toml")))
    assert list(config.dependencies) == ["payments", "catalog", "notifications"]
    defaults = config.defaults
    payments = config.dependencies["payments"]
    assert payments.endpoints == ("https://payments-a.internal", "https://payments-b.internal")
    assert payments.policy.breaker == dataclasses.replace(
        defaults.breaker,  # type: ignore[type-var]
        failure_rate_threshold=0.25,
    )
    assert payments.policy.timeouts == Timeouts(connect=2.0, total=10.0)
    assert payments.policy.bulkhead == Bulkhead(max_concurrent=20, max_wait=0.05)
    catalog = config.dependencies["catalog"].policy
    assert catalog.fallback is not None
    assert catalog.fallback.stale_if_error == 300
    default = catalog.fallback.default
    assert isinstance(default, httpx.Response)
    assert default.json() == {"items": [], "degraded": True}
    notifications = config.dependencies["notifications"].policy
    assert notifications.retry is None
    assert notifications.breaker == defaults.breaker
    assert notifications.timeouts.total == 1.0
    assert notifications.rate_limit == RateLimit(rate=50, per=1.0)
    assert notifications.forward_deadline is False


def test_docs_python_blocks_run_and_print_the_documented_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, doc_block("toml", "seawall.toml"), "seawall.toml")
    write(tmp_path, doc_block("toml", "bad.toml"), "bad.toml")
    monkeypatch.chdir(tmp_path)
    blocks = [body for lang, _, body in doc_blocks() if lang == "python"]
    assert len(blocks) >= 5
    namespace: dict[str, Any] = {}  # the blocks run in order, like one session
    for body in blocks:
        exec(compile(body, str(DOCS), "exec"), namespace)
    (pasted,) = [body for lang, _, body in doc_blocks() if lang == "text"]
    assert capsys.readouterr().out == (
        "services.search.retry.attempts: must be >= 1, got 0\n" + pasted
    )
