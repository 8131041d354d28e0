"""Configuration edges (issue 12, items 11, 12 and 13).

Values that used to crash at run time (OverflowError, MemoryError, an infinite
``retry_after``) are ConfigErrors with their key paths; URLs without a host or
with spaces, and empty dependency names, are ConfigErrors; ``Pool`` derives
``max_keepalive`` from ``max_connections`` unless it is given.
"""

from __future__ import annotations

import dataclasses
import math
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
from seawall._breaker import Breaker
from seawall._config import MAX_COUNT, MAX_SECONDS, MIN_WINDOW
from seawall._ratelimit import RateLimiter
from seawall._retry import BudgetTracker
from seawall.asgi import problem_for
from seawall.testing import ManualClock

HUGE = 10**400  # past float range: math.isfinite() and float() overflow on it


def only_problem(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    assert len(excinfo.value.problems) == 1, excinfo.value.problems
    return excinfo.value.problems[0]


# ---------------------------------------------------------------------------
# Item 11: numbers out of range are ConfigErrors, never a crash


@pytest.mark.parametrize(
    ("cls", "kwargs", "key"),
    [
        pytest.param(Timeouts, {"total": HUGE}, "Timeouts.total", id="timeouts"),
        pytest.param(Backoff, {"initial": HUGE}, "Backoff.initial", id="backoff-initial"),
        pytest.param(Backoff, {"multiplier": HUGE}, "Backoff.multiplier", id="backoff-multiplier"),
        pytest.param(RetryBudget, {"ratio": HUGE}, "RetryBudget.ratio", id="budget-ratio"),
        pytest.param(
            RetryBudget, {"min_per_second": HUGE}, "RetryBudget.min_per_second", id="budget-floor"
        ),
        pytest.param(Retry, {"attempts": HUGE}, "Retry.attempts", id="retry-attempts"),
        pytest.param(
            Retry, {"max_retry_after": HUGE}, "Retry.max_retry_after", id="retry-after-cap"
        ),
        pytest.param(
            Bulkhead, {"max_concurrent": HUGE}, "Bulkhead.max_concurrent", id="bulkhead-slots"
        ),
        pytest.param(Bulkhead, {"max_wait": HUGE}, "Bulkhead.max_wait", id="bulkhead-wait"),
        pytest.param(
            CircuitBreaker,
            {"failure_rate_threshold": HUGE},
            "CircuitBreaker.failure_rate_threshold",
            id="breaker-rate",
        ),
        pytest.param(
            CircuitBreaker,
            {"window": "time", "window_size": HUGE},
            "CircuitBreaker.window_size",
            id="breaker-time-window",
        ),
        pytest.param(
            CircuitBreaker,
            {"open_duration_multiplier": HUGE},
            "CircuitBreaker.open_duration_multiplier",
            id="breaker-multiplier",
        ),
        pytest.param(
            CircuitBreaker, {"open_duration": HUGE}, "CircuitBreaker.open_duration", id="open-for"
        ),
        pytest.param(
            CircuitBreaker,
            {"half_open_calls": HUGE},
            "CircuitBreaker.half_open_calls",
            id="breaker-probes",
        ),
        pytest.param(RateLimit, {"rate": HUGE}, "RateLimit.rate", id="rate"),
        pytest.param(RateLimit, {"rate": 1, "burst": HUGE}, "RateLimit.burst", id="burst"),
        pytest.param(RateLimit, {"rate": 1, "per": HUGE}, "RateLimit.per", id="per"),
        pytest.param(Fallback, {"stale_if_error": HUGE}, "Fallback.stale_if_error", id="stale"),
        pytest.param(Fallback, {"max_bytes": HUGE}, "Fallback.max_bytes", id="cache-bytes"),
        pytest.param(Pool, {"max_connections": HUGE}, "Pool.max_connections", id="pool"),
        pytest.param(Pool, {"keepalive_expiry": HUGE}, "Pool.keepalive_expiry", id="keepalive"),
    ],
)
def test_a_huge_integer_is_a_config_error(cls: type, kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        cls(**kwargs)
    assert only_problem(excinfo).startswith(f"{key}: must be ")


def test_an_integer_too_long_to_print_is_still_a_config_error() -> None:
    # repr() of an int past 4,300 digits raises ValueError: the line must not.
    with pytest.raises(ConfigError) as excinfo:
        Timeouts(total=10**5000)
    assert only_problem(excinfo) == (
        "Timeouts.total: must be <= 1_000_000_000, got <an integer of 16610 bits>"
    )


def test_a_long_value_is_cut_short() -> None:
    with pytest.raises(ConfigError) as excinfo:
        Policy.from_mapping({"retry": {"attempts": "x" * 10_000}})
    line = only_problem(excinfo)
    assert line.endswith("... (10002 characters)")
    assert len(line) < 300


def test_a_count_window_of_1e12_is_a_config_error_not_a_memory_error() -> None:
    with pytest.raises(ConfigError) as excinfo:
        CircuitBreaker(window_size=10**12, minimum_calls=1)
    assert only_problem(excinfo) == (
        "CircuitBreaker.window_size: must be <= 1_000_000, got 1000000000000"
    )
    # The largest accepted window costs a megabyte, once.
    Breaker(CircuitBreaker(window_size=MAX_COUNT), clock=ManualClock(), dependency="d")


@pytest.mark.parametrize(
    ("cls", "kwargs", "key"),
    [
        pytest.param(
            CircuitBreaker,
            {"window": "time", "window_size": 1e-320},
            "CircuitBreaker.window_size",
            id="breaker",
        ),
        pytest.param(RetryBudget, {"window": 1e-320}, "RetryBudget.window", id="budget"),
        pytest.param(RateLimit, {"rate": 1, "per": 1e-320}, "RateLimit.per", id="rate-limit"),
    ],
)
def test_a_tiny_time_window_is_a_config_error(cls: type, kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        cls(**kwargs)
    assert only_problem(excinfo) == f"{key}: must be >= 0.001, got 1e-320"


def test_the_shortest_accepted_windows_work_at_any_time() -> None:
    clock = ManualClock()
    clock.advance(1e9)  # a host up for 30 years
    breaker = Breaker(
        CircuitBreaker(window="time", window_size=MIN_WINDOW, minimum_calls=1),
        clock=clock,
        dependency="d",
    )
    breaker.acquire()
    assert breaker.statistics().failure_rate is None  # reads the window: no OverflowError
    budget = BudgetTracker(RetryBudget(window=MIN_WINDOW, min_per_second=1000), clock=clock)
    budget.record_call()
    assert budget.try_spend()


def test_a_rate_that_would_wait_forever_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as excinfo:
        RateLimit(rate=1e-300)
    assert only_problem(excinfo) == (
        "RateLimit.rate: must be >= per / 1_000_000_000 (per = 1.0), got 1e-300"
    )


@pytest.mark.anyio
async def test_the_slowest_accepted_rate_gives_a_finite_retry_after() -> None:
    limiter = RateLimiter(RateLimit(rate=1 / MAX_SECONDS), clock=ManualClock(), dependency="d")
    await limiter.acquire()
    with pytest.raises(seawall.RateLimitedError) as excinfo:
        await limiter.acquire()
    retry_after = excinfo.value.retry_after
    assert retry_after is not None
    assert math.isfinite(retry_after)
    answer = problem_for(excinfo.value)  # math.ceil(inf) raised: the app answered 500
    assert answer is not None
    assert answer[0] == 503


@pytest.mark.parametrize(
    ("cls", "kwargs", "expected"),
    [
        pytest.param(
            Timeouts, {"attempt": 1e300}, "Timeouts.attempt: must be <= 1_000_000_000, got 1e+300"
        ),
        pytest.param(
            Retry,
            {"max_retry_after": 2e9},
            "Retry.max_retry_after: must be <= 1_000_000_000, got 2000000000.0",
        ),
        pytest.param(
            Bulkhead, {"max_concurrent": 2_000_000}, "Bulkhead.max_concurrent: must be <= 1_000_000"
        ),
        pytest.param(
            Backoff, {"multiplier": 1e7}, "Backoff.multiplier: must be <= 1_000_000, got 10000000.0"
        ),
        pytest.param(
            RateLimit,
            {"rate": 1, "burst": 1e10},
            "RateLimit.burst: must be <= 1_000_000_000, got 10000000000.0",
        ),
    ],
)
def test_documented_maxima(cls: type, kwargs: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        cls(**kwargs)
    assert only_problem(excinfo).startswith(expected)


def test_the_maxima_themselves_are_accepted() -> None:
    Timeouts(total=MAX_SECONDS)
    Retry(attempts=MAX_COUNT, max_retry_after=MAX_SECONDS)
    Backoff(initial=0, maximum=MAX_SECONDS, multiplier=1e6)
    RateLimit(rate=1e9, burst=1e9, per=MAX_SECONDS)
    Fallback(stale_if_error=MAX_SECONDS, max_bytes=2**40, max_entries=MAX_COUNT)


def test_file_values_get_their_key_paths(tmp_path: Path) -> None:
    path = tmp_path / "seawall.toml"
    path.write_text(
        "[defaults.breaker]\nwindow_size = 1000000000000\nminimum_calls = 1\n"
        "[dependencies.pay]\nbase_url = 'https://pay.example'\n"
        "rate_limit = { rate = 1e-300 }\n"
        "retry = { budget = { window = 1e-9 } }\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert excinfo.value.problems == (
        "defaults.breaker.window_size: must be <= 1_000_000, got 1000000000000",
        "dependencies.pay.rate_limit.rate: must be >= per / 1_000_000_000 (per = 1.0), got 1e-300",
        "dependencies.pay.retry.budget.window: must be >= 0.001, got 1e-09",
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        pytest.param(b'a = "\xff"', "utf-8", id="not-utf-8"),
        pytest.param(b"a = 1" + b"0" * 5000, "4300", id="a-5000-digit-integer"),
        pytest.param(b"a = " + b"[" * 5000 + b"]" * 5000, "recursion", id="nested-arrays"),
    ],
)
def test_what_tomllib_lets_through_is_a_config_error(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "seawall.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert only_problem(excinfo).startswith(f"{path}: not valid TOML (")
    assert reason in only_problem(excinfo)


@pytest.mark.parametrize(
    ("default", "expected"),
    [
        pytest.param(
            {"json": {"when": __import__("datetime").date(2024, 1, 2)}},
            "fallback.default.json: must be JSON data (no dates, NaN or infinity),"
            " got {'when': datetime.date(2024, 1, 2)}",
            id="a-toml-date",
        ),
        pytest.param(
            {"json": [float("nan")]},
            "fallback.default.json: must be JSON data (no dates, NaN or infinity), got [nan]",
            id="nan",
        ),
        pytest.param(
            {"headers": {"x-note": "café"}},
            "fallback.default.headers: must be a table of ASCII strings, got {'x-note': 'café'}",
            id="non-ascii-header",
        ),
    ],
)
def test_a_default_response_httpx_cannot_build(default: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Policy.from_mapping({"fallback": {"default": default}})
    assert only_problem(excinfo) == expected


# ---------------------------------------------------------------------------
# Item 12: URLs and names


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("http://", "must be a URL with a host", id="no-host"),
        pytest.param("https://:8080/v1", "must be a URL with a host", id="port-only"),
        pytest.param(
            "http://pay example", "must be a URL without spaces or control characters", id="space"
        ),
        pytest.param(
            "http://pay.example/a b",
            "must be a URL without spaces or control characters",
            id="space-in-path",
        ),
        pytest.param(
            "http://pay.example/\n", "must be a URL without spaces or control characters", id="nl"
        ),
        pytest.param("http://[::1", "must be a valid URL", id="broken-ipv6"),
        pytest.param("http://pay.example:0", "must be a URL with a port in 1..65535", id="port-0"),
    ],
)
def test_bad_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Config.from_mapping({"dependencies": {"pay": {"base_url": url}}})
    assert only_problem(excinfo) == f"dependencies.pay.base_url: {message}, got {url!r}"
    with pytest.raises(ConfigError) as excinfo:
        Config.from_mapping({"dependencies": {"pay": {"endpoints": ["https://a.example", url]}}})
    assert only_problem(excinfo) == f"dependencies.pay.endpoints[1]: {message}, got {url!r}"
    with pytest.raises(ConfigError) as excinfo:
        DependencySpec(name="pay", policy=Policy(), base_url=url)
    assert only_problem(excinfo) == f"DependencySpec.base_url: {message}, got {url!r}"


def test_registry_add_refuses_a_url_without_a_host() -> None:
    with pytest.raises(ConfigError) as excinfo:
        seawall.Registry().add("pay", base_url="http://")
    assert (
        only_problem(excinfo) == "DependencySpec.base_url: must be a URL with a host, got 'http://'"
    )


@pytest.mark.parametrize(
    ("name", "path"),
    [
        pytest.param("", 'dependencies.""', id="empty"),
        pytest.param("   ", 'dependencies."   "', id="blank"),
        pytest.param("pay\nments", 'dependencies."pay\\nments"', id="newline"),
    ],
)
def test_a_bad_dependency_name_is_a_config_error_with_its_key_path(name: str, path: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Config.from_mapping({"dependencies": {name: {"base_url": "https://a.example"}}})
    assert only_problem(excinfo) == (
        f"{path}: must be a non-empty name of printable characters (the dependency's name),"
        f" got {name!r}"
    )
    with pytest.raises(ConfigError):
        seawall.Registry.from_config({"dependencies": {name: {"base_url": "https://a.example"}}})
    with pytest.raises(ConfigError) as excinfo:
        seawall.Registry().add(name, base_url="https://a.example")
    assert only_problem(excinfo) == (
        f"DependencySpec.name: must be a non-empty name of printable characters, got {name!r}"
    )


def test_an_empty_dependency_name_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "seawall.toml"
    path.write_text('[dependencies.""]\nbase_url = "https://a.example"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        seawall.Registry.from_toml(path)
    assert only_problem(excinfo).startswith('dependencies."": must be a non-empty name')


def test_names_and_urls_that_were_fine_stay_fine() -> None:
    config = Config.from_mapping(
        {
            "dependencies": {
                "pay-v2": {"base_url": "https://alice:pw@pay.example:8443/v1/"},
                "db": {},
                "idn": {"endpoints": ["https://bücher.example", "http://[::1]:8080"]},
            }
        }
    )
    assert set(config.dependencies) == {"pay-v2", "db", "idn"}


# ---------------------------------------------------------------------------
# Item 13: Pool(max_connections=5) just works


@pytest.mark.parametrize(
    ("max_connections", "keepalive"), [(1, 1), (5, 5), (20, 20), (21, 20), (100, 20)]
)
def test_max_keepalive_defaults_to_at_most_max_connections(
    max_connections: int, keepalive: int
) -> None:
    pool = Pool(max_connections=max_connections)
    assert pool.max_keepalive == keepalive
    assert pool == Pool(max_connections=max_connections, max_keepalive=keepalive)


def test_replace_derives_max_keepalive_again() -> None:
    assert dataclasses.replace(Pool(), max_connections=3).max_keepalive == 3
    assert dataclasses.replace(Pool(max_connections=3), max_connections=50).max_keepalive == 20
    # A value given is kept, and still checked.
    assert dataclasses.replace(Pool(max_keepalive=2), max_connections=3).max_keepalive == 2
    with pytest.raises(ConfigError):
        dataclasses.replace(Pool(max_keepalive=10), max_connections=3)


def test_an_explicit_max_keepalive_is_still_validated() -> None:
    with pytest.raises(ConfigError) as excinfo:
        Pool(max_connections=5, max_keepalive=20)
    assert only_problem(excinfo) == "Pool.max_keepalive: must be <= max_connections (5), got 20"


def test_a_pool_from_a_file_and_in_a_client() -> None:
    policy = Policy.from_mapping({"pool": {"max_connections": 5}})
    assert policy.pool.max_keepalive == 5
    client = seawall.ResilientClient("pool5", policy=policy, base_url="https://a.example")
    assert isinstance(client, httpx.AsyncClient)
