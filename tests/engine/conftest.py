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
