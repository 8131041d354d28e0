from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import seawall
from seawall import _clock, _registry

if os.environ.get("SEAWALL_TEST_HTTP") == "httpx2":
    # The run under httpx2 (`make pytest-httpx2`): `python -m seawall.testing.httpx2_run`
    # aliased httpx to httpx2 before anything imported it; the public classes
    # the tests use become seawall.httpx2's.
    import seawall.httpx2

    seawall.ResilientClient = seawall.httpx2.ResilientClient  # type: ignore[misc]
    seawall.ResilientTransport = seawall.httpx2.ResilientTransport  # type: ignore[misc]
    seawall.AttemptTimeout = seawall.httpx2.AttemptTimeout  # type: ignore[misc]


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Tests marked ``pytest.mark.anyio`` run on both backends."""
    return str(request.param)


@pytest.fixture(autouse=True)
def _reset_global_state() -> Iterator[None]:
    """Every test starts with a fresh default registry and waits enabled."""
    _registry.reset_default_registry()
    before = _clock._waits_disabled
    yield
    _registry.reset_default_registry()
    _clock._waits_disabled = before
