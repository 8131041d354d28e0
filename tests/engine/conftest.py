"""Fixtures for the engine's contract suite: one loopback upstream, both front ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from seawall.testing import FaultyUpstream


@pytest.fixture(scope="session")
def _server() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as server:
        yield server


@pytest.fixture
def upstream(_server: FaultyUpstream) -> Iterator[FaultyUpstream]:
    _server.reset()
    yield _server
    _server.reset()


@pytest.fixture(scope="session")
def _server_b() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as server:
        yield server


@pytest.fixture
def upstream_b(_server_b: FaultyUpstream) -> Iterator[FaultyUpstream]:
    """A second, independent server (for redundant endpoints)."""
    _server_b.reset()
    yield _server_b
    _server_b.reset()
