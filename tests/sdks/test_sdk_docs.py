"""docs/sdks.md shows the code that is type-checked and run.

Every ``python`` block of the page appears, line for line (imports, blank lines
and indentation aside), in tests/typing/sdk_recipes.py, which ``make
typecheck`` checks with mypy --strict and test_sdk_recipes.py runs. The page's
measured tables are filled in (no placeholder left).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "sdks.md"
RECIPES = ROOT / "tests" / "typing" / "sdk_recipes.py"
_FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def _lines(code: str) -> list[str]:
    return [
        line.strip()
        for line in code.splitlines()
        if line.strip() and not re.match(r"\s*(import|from) \S+", line)
    ]


def _python_blocks() -> list[pytest.ParameterSet]:
    text = PAGE.read_text()
    return [
        pytest.param(m.group(3), id=f"sdks.md:{text.count(chr(10), 0, m.start()) + 1}")
        for m in _FENCE.finditer(text)
        if m.group(1) == "python"
    ]


@pytest.mark.parametrize("code", _python_blocks())
def test_every_python_block_is_a_checked_recipe(code: str) -> None:
    block = _lines(code)
    recipes = _lines(RECIPES.read_text())
    starts = [i for i, line in enumerate(recipes) if line == block[0]]
    assert any(recipes[i : i + len(block)] == block for i in starts), (
        "this block of docs/sdks.md is not in tests/typing/sdk_recipes.py as it stands:\n" + code
    )


def test_the_recipes_import_what_the_blocks_import() -> None:
    text = PAGE.read_text()
    recipes = RECIPES.read_text()
    for m in _FENCE.finditer(text):
        if m.group(1) != "python":
            continue
        for line in m.group(3).splitlines():
            if re.match(r"(import|from) \S+", line):
                assert line in recipes, f"{line!r} (docs/sdks.md) is not in sdk_recipes.py"
