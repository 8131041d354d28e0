"""Fuzzed parsers (issue 12: "a hypothesis test fuzzes the header and config parsers").

* The config parsers (``Policy.from_mapping``, ``Config.from_mapping``,
  ``load_config``) raise ConfigError and nothing else, whatever the input, and
  a configuration they accept prints and can be built into a Registry.
* ``parse_retry_after`` returns None or a number of seconds >= 0, never raises.
* The middleware's deadline-header parser returns None or a finite number of
  seconds >= 0, never raises.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seawall
from seawall import Config, ConfigError, Policy, load_config
from seawall._config import _HTTPX_OPTIONS, _MAPPING_KEYS, _POLICY_PARTS
from seawall._retry import parse_retry_after
from seawall.asgi import _parse_deadline

T = TypeVar("T")

# Cheap enough for a shared 2-core machine; the seeds that matter are kept in
# hypothesis' example database between runs.
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------
# Config-shaped data: real keys most of the time, so that fuzzing reaches deep.

REAL_KEYS = sorted(
    {k for keys in _MAPPING_KEYS.values() for k in keys}
    | {name for name, _, _ in _POLICY_PARTS}
    | set(_HTTPX_OPTIONS)
    | {"forward_deadline", "base_url", "endpoints", "defaults", "dependencies"}
    | {"status", "headers", "json", "text", "window", "count", "time"}
)
keys = st.sampled_from(REAL_KEYS) | st.text(max_size=8)

odd_numbers = st.sampled_from(
    [0, -1, 1, 2**63, 10**12, 10**400, 1e-320, 1e-9, 1e300, 0.5, -0.0]
) | st.just(5000).map(lambda digits: 10**digits)  # too long for repr(), and for hypothesis's
odd_strings = st.sampled_from(
    [
        "",
        " ",
        "http://",
        "https://",
        "http://a b",
        "https://u:pw@a.example",
        "http://[::1",
        "https://a.example:99999",
        "count",
        "time",
        "GET",
        "get",
        "\x00",
        "é",
    ]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | odd_numbers
    | st.floats()
    | st.text(max_size=12)
    | odd_strings
    | st.dates()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)
policy_like = st.dictionaries(keys, values, max_size=6) | st.fixed_dictionaries(
    {}, optional={name: values for name, _, _ in _POLICY_PARTS}
)
config_like = st.fixed_dictionaries(
    {},
    optional={
        "defaults": policy_like | values,
        "dependencies": st.dictionaries(st.text(max_size=6) | odd_strings, policy_like | values)
        | values,
    },
) | st.dictionaries(keys, values, max_size=3)


def built(make: Callable[[], T]) -> T | tuple[str, ...]:
    """What *make* built, or the problems of its ConfigError; any other error propagates."""
    try:
        return make()
    except ConfigError as exc:
        return exc.problems


def check(result: object) -> None:
    if isinstance(result, tuple):  # refused: at least one problem line, each a non-empty str
        assert result
        assert all(isinstance(line, str) and line for line in result)
    elif isinstance(result, Config):  # accepted: it prints, and a registry can serve it
        repr(result)
        seawall.Registry.from_config(result)
    else:
        repr(result)


@FUZZ
@given(policy_like | values)
def test_policy_from_mapping_raises_only_config_error(data: Any) -> None:
    check(built(lambda: Policy.from_mapping(data)))


@FUZZ
@given(config_like)
def test_config_from_mapping_raises_only_config_error(data: Any) -> None:
    check(built(lambda: Config.from_mapping(data)))


# ---------------------------------------------------------------------------
# TOML files: fuzzed documents and fuzzed bytes


def toml_value(value: Any) -> str:
    """A tiny TOML writer (inline tables): enough for fuzzed documents."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)  # inf and -inf are TOML too
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    items = (f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items())
    return "{" + ", ".join(items) + "}"


def toml_document(data: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in data.items())


toml_scalars = (
    st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.sampled_from([0, -1, 2**63, 10**12, 10**400, 1e-320, 1e300, 0.5])
    | st.floats()
    | st.text(max_size=12)
    | odd_strings
    | st.dates()
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)
toml_policy = st.dictionaries(keys, toml_values, max_size=6) | st.fixed_dictionaries(
    {}, optional={name: toml_values for name, _, _ in _POLICY_PARTS}
)
toml_config = st.fixed_dictionaries(
    {},
    optional={
        "defaults": toml_policy,
        "dependencies": st.dictionaries(st.text(max_size=6) | odd_strings, toml_policy),
    },
) | st.dictionaries(keys, toml_values, max_size=3)


@pytest.fixture(scope="module")
def toml_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory) / "seawall.toml"


def load(path: Path) -> None:
    check(built(lambda: load_config(path)))


@FUZZ
@given(data=toml_config)
def test_load_config_of_fuzzed_documents_raises_only_config_error(
    toml_path: Path, data: dict[str, Any]
) -> None:
    toml_path.write_text(toml_document(data), encoding="utf-8")
    load(toml_path)


@FUZZ
@given(
    content=st.binary(max_size=200)
    | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))
)
def test_load_config_of_fuzzed_bytes_raises_only_config_error(
    toml_path: Path, content: bytes
) -> None:
    toml_path.write_bytes(content)
    load(toml_path)


def test_the_toml_writer_round_trips() -> None:
    import tomllib

    data = {"a": {"b": [1, 2.5, "x\n", True, dt.date(2024, 1, 2)], "c": {"d": float("inf")}}}
    assert tomllib.loads(toml_document(data)) == data


# ---------------------------------------------------------------------------
# Header parsers

http_dates = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)).map(
    lambda d: email.utils.format_datetime(d.replace(tzinfo=dt.UTC), usegmt=True)
)
retry_after_values = (
    st.none()
    | st.text(max_size=40)
    | st.from_regex(r"\A\s*[0-9]{1,400}\s*\Z")
    | http_dates
    | http_dates.map(lambda d: d.replace("GMT", "+9999"))
    | http_dates.map(lambda d: d[:-7])
)


@FUZZ
@given(retry_after_values, st.none() | st.floats(min_value=0, max_value=1e10))
def test_parse_retry_after_never_raises(value: str | None, now_wall: float | None) -> None:
    seconds = parse_retry_after(value, now_wall=now_wall)
    # Documented: None for a missing or malformed value, else seconds >= 0.
    assert seconds is None or (isinstance(seconds, float) and seconds >= 0)


deadline_values = (
    st.binary(max_size=40)
    | st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass"))
    | st.from_regex(rb"\A\s*-?[0-9._eE+-]{0,30}(ms|s|S|MS)?\s*\Z")
    | st.sampled_from([b"inf", b"nan", b"1e400ms", b"-0", b"1_000", b"0x10", b"\xff\xfe"])
)


@FUZZ
@given(deadline_values)
def test_the_deadline_header_parser_never_raises(value: bytes) -> None:
    seconds = _parse_deadline(value)
    # Documented: None for a malformed header, else a finite number of seconds >= 0.
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)
