"""Smoke-check the installed wheel (run by `make package` in a fresh virtualenv)."""

from __future__ import annotations

import importlib.resources
import subprocess
import sys

import anyio

import seawall
import seawall.testing

assert "site-packages" in seawall.__file__, f"not the installed package: {seawall.__file__}"
assert seawall.__version__[0].isdigit(), seawall.__version__
assert importlib.resources.files("seawall").joinpath("py.typed").is_file(), "py.typed missing"
for heavy in (
    "fastapi",
    "litestar",
    "opentelemetry.sdk",
    "uvicorn",
    "rich",
    "httpx2",
    "stripe",
    "redis",
    "sqlalchemy",
):
    assert heavy not in sys.modules, f"importing seawall imported {heavy}"


async def main() -> None:
    clock = seawall.testing.ManualClock()
    g = seawall.guard("db", seawall.Policy(retry=seawall.Retry(attempts=2)), clock=clock)
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("first call fails")
        return "ok"

    assert await g.call(flaky) == "ok"
    assert calls == 2

    with seawall.testing.FaultyUpstream() as upstream:
        async with seawall.ResilientClient("up", base_url=upstream.url) as client:
            response = await client.get("/ping")
            report = seawall.report_of(response)
            assert response.status_code == 200
            assert report is not None
            assert report.outcome == "success"


anyio.run(main)
help_text = subprocess.run(
    [sys.executable, "-m", "seawall", "demo", "--help"], capture_output=True, text=True, check=True
).stdout
assert "--duration" in help_text
print("installed package: ok")
