"""Fixtures for the SDK recipe tests: one loopback server plays every API."""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from seawall.testing import FaultyUpstream

_names = itertools.count()


@pytest.fixture(scope="session")
def _api_server() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as server:
        yield server


@pytest.fixture
def api(_api_server: FaultyUpstream) -> Iterator[FaultyUpstream]:
    """The fake API (openai, anthropic, stripe or GitHub): no routes, an empty log."""
    _api_server.reset()
    yield _api_server
    _api_server.reset()


@pytest.fixture
def dependency(request: pytest.FixtureRequest) -> str:
    """A dependency name no other test uses: seawall.double_retry warns once per name."""
    return f"{re.sub(r'[^A-Za-z0-9]+', '-', request.node.name).strip('-')}-{next(_names)}"


# docs/sdks.md's recipes live in tests/typing/sdk_recipes.py (type-checked there);
# test_sdk_recipes.py imports and runs them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "typing"))
