"""Shared fixtures for the ResilientClient / ResilientTransport tests.

Two real loopback servers (``FaultyUpstream``) live for the whole session and
are reset around every test; time-dependent behaviour (breaker open time,
Retry-After, cache age) runs on a ``ManualClock``.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

import seawall
from seawall.testing import ManualClock
from seawall.testing._upstream import FaultyUpstream

#: Backoff that never waits: retries run back to back.
NO_WAIT = seawall.Backoff(initial=0.0, maximum=0.0, jitter=False)


def _fresh(server: FaultyUpstream) -> Iterator[FaultyUpstream]:
    server.reset()
    yield server
    server.reset()


@pytest.fixture(scope="session")
def _server_a() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as server:
        yield server


@pytest.fixture(scope="session")
def _server_b() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as server:
        yield server


@pytest.fixture
def upstream(_server_a: FaultyUpstream) -> Iterator[FaultyUpstream]:
    """A healthy loopback HTTP server with no routes and an empty request log."""
    yield from _fresh(_server_a)


@pytest.fixture
def upstream_b(_server_b: FaultyUpstream) -> Iterator[FaultyUpstream]:
    """A second, independent server (for redundant endpoints)."""
    yield from _fresh(_server_b)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def refused_url() -> str:
    """A loopback URL where nothing listens: connecting is refused."""
    return f"http://127.0.0.1:{FaultyUpstream.refused_port()}"


def make_policy(
    *,
    attempts: int = 3,
    retry: seawall.Retry | bool | None = True,
    breaker: seawall.CircuitBreaker | None = None,
    **parts: Any,
) -> seawall.Policy:
    """A test-friendly policy: no backoff wait, no retry budget, no breaker.

    ``retry=None`` turns retrying off; a ``Retry`` replaces the default one.
    """
    if retry is True:
        retry = seawall.Retry(attempts=attempts, backoff=NO_WAIT, budget=None)
    return seawall.Policy(retry=retry or None, breaker=breaker, **parts)


@pytest.fixture
def policy() -> Callable[..., seawall.Policy]:
    """``policy(attempts=3, retry=True, breaker=None, **parts)``: see :func:`make_policy`."""
    return make_policy


async def wait_until(predicate: Callable[[], bool], within: float = 2.0) -> None:
    """Poll *predicate* (every few ms, on the running event loop) until it holds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await anyio.sleep(0.005)


@pytest.fixture
def until() -> Callable[..., Any]:
    """``await until(lambda: ...)``: wait (briefly) for a condition set by the server thread."""
    return wait_until


# Building the default TLS context (loading the CA bundle) costs ~30 ms per
# client; the servers here are plain HTTP, so every client shares one.
_TLS = ssl.create_default_context()


def _make_client(dependency: str = "dep", **kwargs: Any) -> seawall.ResilientClient:
    if "transport" not in kwargs:
        kwargs.setdefault("verify", _TLS)
    return seawall.ResilientClient(dependency, **kwargs)


@pytest.fixture
def make_client() -> Callable[..., seawall.ResilientClient]:
    """``make_client(dependency, **kwargs)``: a ResilientClient sharing one TLS context."""
    return _make_client
