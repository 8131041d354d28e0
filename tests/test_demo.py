"""`seawall demo`: the summary it prints, Ctrl-C, a busy port.

These run the real thing: two fault-injecting upstreams, both app variants
under uvicorn in child processes, and the traffic generator.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

DEMO = [sys.executable, "-m", "seawall", "demo"]


def _sockets_of(pid: int) -> int:
    """How many sockets process *pid* has open."""
    count = 0
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return 0
    for fd in fds:
        try:
            if os.readlink(fd).startswith("socket:"):
                count += 1
        except OSError:  # closed meanwhile
            continue
    return count


def _children_of(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        # the parent pid is the 4th field, after "(comm)"
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(proc.name))
    return found


@pytest.fixture(scope="module")
def summary() -> dict[str, object]:
    # payments hangs for most of the run; 100 /pay clients are enough to fill
    # a shared httpx client's pool of 100 connections.
    result = subprocess.run(
        [*DEMO, "--duration", "12", "--scenario", "hang", "--json", "--think", "0.5"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data: dict[str, object] = json.loads(result.stdout)
    return data


@pytest.mark.slow  # the summary's demo run takes ~18 s
def test_the_summary_has_the_documented_shape(summary: dict[str, object]) -> None:
    runs = summary["runs"]
    assert isinstance(runs, dict)
    assert set(runs) == {"plain", "seawall"}
    for run in runs.values():
        assert set(run["routes"]) == {"/catalog", "/pay"}
        for route in run["routes"].values():
            assert set(route) == {"requests", "p50_ms", "p99_ms", "errors", "statuses"}
            assert route["requests"] > 0
        assert "payments" in run["dependencies"]
        assert "outcomes" in run["dependencies"]["payments"]
        # Additive: each phase's routes and outcomes.
        assert [p["phase"] for p in run["phases"]] == [
            "healthy",
            "payments hung",
            "payments recovered",
        ]
        for phase in run["phases"]:
            assert set(phase["routes"]) == {"/catalog", "/pay"}
            assert "payments" in phase["outcomes"]
    # Additive: the two figures the demo is judged by.
    comparison = summary["comparison"]
    assert isinstance(comparison, dict)
    assert set(comparison["payments_completed"]) == {"plain", "seawall"}
    for figures in comparison["catalog_p99"].values():
        assert set(figures) == {"healthy_p99_ms", "storm_p99_ms", "ratio"}


@pytest.mark.slow  # the summary's demo run takes ~18 s
def test_seawall_keeps_the_catalog_healthy_while_the_plain_app_does_not(
    summary: dict[str, object],
) -> None:
    runs = summary["runs"]
    assert isinstance(runs, dict)
    plain = runs["plain"]["routes"]["/catalog"]
    ours = runs["seawall"]["routes"]["/catalog"]
    assert ours["errors"] == 0
    # The shared pool fills with hung payments: catalog requests queue behind
    # them for seconds. seawall's catalog has its own pool and never waits, so it
    # is faster at the tail; by how much depends on the machine's load (a factor
    # of 2.5 to 5 beside two CPU hogs), so no factor is asserted.
    assert plain["p99_ms"] > 1000
    assert ours["p99_ms"] < plain["p99_ms"]


@pytest.mark.slow  # the summary's demo run takes ~18 s
def test_seawall_fails_payments_fast_once_the_breaker_opens(summary: dict[str, object]) -> None:
    runs = summary["runs"]
    assert isinstance(runs, dict)
    pay = runs["seawall"]["routes"]["/pay"]
    outcomes = runs["seawall"]["dependencies"]["payments"]["outcomes"]
    assert outcomes.get("circuit_open", 0) > 0
    assert pay["statuses"].get("503", 0) > 0
    # Most /pay answers during the hang are fast refusals, not 10 s waits.
    assert pay["p50_ms"] < 1000
    plain_pay = runs["plain"]["routes"]["/pay"]
    assert plain_pay["p99_ms"] > 4000  # the plain app waits out httpx's 5 s timeout


def test_ctrl_c_stops_everything_cleanly() -> None:
    proc = subprocess.Popen(
        [*DEMO, "--duration", "30", "--pay-clients", "10", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Interrupt the run itself: four children exist before the last one has
        # answered READY, but the demo process opens its first socket (the
        # traffic's client) only once every child is up and the run has begun.
        deadline = time.monotonic() + 60
        while _sockets_of(proc.pid) == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        children = _children_of(proc.pid)
        assert _sockets_of(proc.pid) > 0, "the demo's run did not begin"
        assert len(children) == 4, "the two upstreams and two apps did not start"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    for child in children:
        assert (
            not Path(f"/proc/{child}").exists()
            or "Z" in (Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0])
        ), f"child {child} left behind"


def test_a_busy_port_is_reported_clearly() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [*DEMO, "--duration", "2", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ},
        )
    assert result.returncode == 2
    assert f"127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
