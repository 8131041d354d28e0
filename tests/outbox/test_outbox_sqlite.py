"""seawall.outbox.configure_sqlite: WAL, a busy timeout and synchronous on every connection."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from seawall.outbox import configure_sqlite

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SQLAlchemy's async layer is asyncio-only


async def test_every_connection_gets_the_pragmas(tmp_path: Path) -> None:
    engine = configure_sqlite(
        create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"),
        busy_timeout=2.5,
        synchronous="full",
    )
    try:
        async with engine.connect() as conn:
            mode = (await conn.execute(sa.text("PRAGMA journal_mode"))).scalar()
            timeout = (await conn.execute(sa.text("PRAGMA busy_timeout"))).scalar()
            synchronous = (await conn.execute(sa.text("PRAGMA synchronous"))).scalar()
    finally:
        await engine.dispose()
    assert (mode, timeout, synchronous) == ("wal", 2500, 2)  # 2: FULL


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"busy_timeout": -1}, "busy_timeout): must be a number of seconds >= 0, got -1"),
        ({"busy_timeout": True}, "got True"),
        ({"busy_timeout": float("nan")}, "got nan"),
        ({"synchronous": "sometimes"}, "synchronous): must be 'OFF', 'NORMAL', 'FULL' or 'EXTRA'"),
    ],
)
async def test_bad_settings_name_the_field_and_value(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        with pytest.raises(ValueError, match=r"^configure_sqlite") as info:
            configure_sqlite(engine, **kwargs)  # type: ignore[arg-type]
        assert message in str(info.value)
    finally:
        await engine.dispose()


def test_other_databases_are_refused() -> None:
    engine = create_async_engine("postgresql+asyncpg://u@127.0.0.1/db")
    with pytest.raises(TypeError, match="must be a SQLite AsyncEngine"):
        configure_sqlite(engine)
