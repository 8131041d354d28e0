"""Importing seawall never pulls in the optional web frameworks."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "imports",
    ["import seawall", "import seawall, seawall.asgi", "import seawall, seawall.testing"],
)
def test_importing_seawall_imports_no_framework(imports: str) -> None:
    code = (
        f"{imports}, sys\n"
        "leaked = sorted(m for m in ('litestar', 'fastapi') if m in sys.modules)\n"
        "assert not leaked, leaked\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_integrations_import_their_framework() -> None:
    """The check above can fail: the integration modules do import them."""
    code = (
        "import sys, seawall.fastapi, seawall.litestar\n"
        "assert 'fastapi' in sys.modules and 'litestar' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
