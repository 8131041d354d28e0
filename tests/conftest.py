from __future__ import annotations

from collections.abc import Iterator

import pytest

from seawall import _clock, _registry


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
