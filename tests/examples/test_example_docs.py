"""The code in docs/fastapi.md, docs/litestar.md and docs/http-errors.md works as shown.

* Every ``python`` block compiles.
* A block followed by an ``Output`` block runs as a script, in a fresh
  interpreter with warnings as errors, and prints exactly that output
  (structlog's log lines aside).
* A block that defines ``test_*`` functions has them run.
* A block titled with a file of the repository is a verbatim excerpt of it.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from example_shop_harness import ROOT

PAGES = ("fastapi.md", "litestar.md", "http-errors.md")

_FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_TITLE = re.compile(r'title="([^"]+)"')
# structlog's default console renderer: "2026-01-01 12:00:00 [info     ] event ..."
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    language: str
    title: str | None
    code: str
    output: str | None  # the Output block right after it, if any

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def blocks() -> list[Block]:
    found: list[Block] = []
    for page in PAGES:
        text = (ROOT / "docs" / page).read_text()
        fences = list(_FENCE.finditer(text))
        for i, fence in enumerate(fences):
            language, info, code = fence.group(1), fence.group(2), fence.group(3)
            if language != "python":
                continue
            title = _TITLE.search(info)
            output = None
            if i + 1 < len(fences):
                after = fences[i + 1]
                between = text[fence.end() : after.start()]
                if not between.strip() and 'title="Output"' in after.group(2):
                    output = after.group(3)
            found.append(
                Block(
                    page=page,
                    line=text.count("\n", 0, fence.start()) + 1,
                    language=language,
                    title=title.group(1) if title else None,
                    code=code,
                    output=output,
                )
            )
    return found


ALL = blocks()
SCRIPTS = [b for b in ALL if b.output is not None]
TESTS = [b for b in ALL if "def test_" in b.code]
EXCERPTS = [b for b in ALL if b.title is not None]


def test_the_pages_have_code() -> None:
    assert {b.page for b in ALL} == set(PAGES)
    assert SCRIPTS
    assert TESTS
    assert EXCERPTS


@pytest.mark.parametrize("block", ALL, ids=[b.id for b in ALL])
def test_block_compiles(block: Block) -> None:
    compile(block.code, block.id, "exec")


@pytest.mark.parametrize("block", SCRIPTS, ids=[b.id for b in SCRIPTS])
def test_script_prints_its_output(block: Block) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", block.code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    printed = [line for line in result.stdout.splitlines() if not _LOG_LINE.match(line)]
    assert printed == block.output.splitlines()  # type: ignore[union-attr]


@pytest.mark.parametrize("block", TESTS, ids=[b.id for b in TESTS])
def test_test_snippet_passes(block: Block) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{Path(block.page).stem}_{block.line}"}
    exec(compile(block.code, block.id, "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_") and callable(f)]
    assert tests
    for test in tests:
        if inspect.iscoroutinefunction(test):
            anyio.run(test)
        else:
            test()


@pytest.mark.parametrize("block", EXCERPTS, ids=[b.id for b in EXCERPTS])
def test_excerpt_matches_its_file(block: Block) -> None:
    source = (ROOT / block.title).read_text()  # type: ignore[operator]
    assert block.code in source, f"{block.id} is not an excerpt of {block.title}"
