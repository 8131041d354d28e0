"""Run pytest with httpx aliased to httpx2 before anything imports httpx.

    python scripts/pytest_httpx2.py tests/client tests/engine

Under this run the client and engine suites exercise ``seawall.httpx2``'s
classes (tests/conftest.py swaps them in) against the same loopback servers.
"""

from __future__ import annotations

import os
import sys

import httpx2

httpx2.alias_httpx()
os.environ["SEAWALL_TEST_HTTP"] = "httpx2"

import pytest  # noqa: E402

# alias_httpx() imported anyio (and others) before pytest could rewrite their asserts.
sys.exit(pytest.main(["-W", "ignore::pytest.PytestAssertRewriteWarning", *sys.argv[1:]]))
