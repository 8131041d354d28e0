"""Fixtures for the hardening tests of the middleware, cache and registry (issue 12)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from seawall.testing import FaultyUpstream, ManualClock


@pytest.fixture
def upstream() -> Iterator[FaultyUpstream]:
    """A fresh, healthy loopback HTTP server for one test."""
    with FaultyUpstream() as server:
        yield server


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
