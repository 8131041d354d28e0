"""Fixtures for the integration tests: real loopback upstreams, a manual clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from seawall.testing import ManualClock
from seawall.testing._upstream import FaultyUpstream


@pytest.fixture
def upstream() -> Iterator[FaultyUpstream]:
    """A fresh, healthy loopback HTTP server for one test."""
    with FaultyUpstream() as server:
        yield server


@pytest.fixture
def upstream_b() -> Iterator[FaultyUpstream]:
    """A second, independent loopback server."""
    with FaultyUpstream() as server:
        yield server


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
