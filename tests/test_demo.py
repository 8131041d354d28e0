"""`seawall demo`: the summary it prints, the ledger check, Ctrl-C, a busy port.

These run the real thing: two fake payment providers, both app variants
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
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest

from seawall._demo.runner import ledger_check
from seawall._demo.upstream import ledger
from seawall.testing import PaymentProvider

DEMO = [sys.executable, "-m", "seawall", "demo"]
#: The figures of the ledger check, for both shops; the seawall shop's outbox adds the rest.
LEDGER = {
    "charges",
    "refunded",
    "charged",
    "orders",
    "paid",
    "charged_twice",
    "lost",
    "paid_not_charged",
    "cancelled_but_charged",
}
OUTBOX = {"verified", "compensated", "pending", "unknown"}


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
    # Additive: the ledger check.
    assert set(runs["plain"]["payments"]) == LEDGER
    assert set(runs["seawall"]["payments"]) == LEDGER | OUTBOX
    for variant in ("plain", "seawall"):
        payments = runs[variant]["payments"]
        assert comparison["payments_completed"][variant] == payments["paid"]
        assert comparison["ledger"][variant] == {
            "charged_twice": payments["charged_twice"],
            "lost": payments["lost"],
        }
    assert summary["payment_window_s"] == 10.0
    assert "drained_s" in summary


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
def test_seawall_takes_every_order_at_once_and_its_outbox_rides_out_the_hang(
    summary: dict[str, object],
) -> None:
    runs = summary["runs"]
    assert isinstance(runs, dict)
    pay = runs["seawall"]["routes"]["/pay"]
    # /pay records the order and its charge in one transaction and answers
    # 202: no customer waits for the hung provider.
    assert set(pay["statuses"]) == {"202"}
    assert pay["p50_ms"] < 1000
    # The outbox's dispatcher met the hang: unknown outcomes, then an open
    # breaker that stopped it sending.
    outcomes = runs["seawall"]["dependencies"]["payments"]["outcomes"]
    assert outcomes.get("outcome_unknown", 0) > 0
    assert outcomes.get("circuit_open", 0) > 0
    plain_pay = runs["plain"]["routes"]["/pay"]
    assert plain_pay["p99_ms"] > 4000  # the plain app waits out httpx's 5 s timeout


@pytest.mark.slow  # the summary's demo run takes ~18 s
def test_the_ledger_check_catches_the_plain_shop_and_clears_the_seawall_shop(
    summary: dict[str, object],
) -> None:
    runs = summary["runs"]
    assert isinstance(runs, dict)
    plain, ours = runs["plain"]["payments"], runs["seawall"]["payments"]
    # Hung charges were made; the customers who clicked again were charged again.
    # (How many orders end up lost, every click failed, depends on where the
    # last hung charges fall against the end of the run: not asserted here.)
    assert plain["charged_twice"] > 0
    assert plain["charges"] > plain["charged"]
    assert plain["paid_not_charged"] == 0
    # The seawall shop: one charge per order, every charge an order of its own.
    assert ours["charged_twice"] == 0
    assert ours["lost"] == 0
    assert ours["paid_not_charged"] == 0
    assert ours["cancelled_but_charged"] == 0
    assert ours["verified"] > 0  # unknown outcomes settled by asking the provider
    assert ours["paid"] + ours["compensated"] + ours["pending"] + ours["unknown"] == ours["orders"]


def test_a_short_run_leaves_the_seawall_ledger_clean() -> None:
    result = subprocess.run(
        [
            *DEMO,
            *("--duration", "3", "--scenario", "hang", "--json"),
            *("--pay-clients", "20", "--catalog-clients", "2", "--think", "0.5"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    ours = json.loads(result.stdout)["runs"]["seawall"]["payments"]
    assert ours["orders"] > 0
    assert ours["charged_twice"] == 0
    assert ours["lost"] == 0
    assert ours["paid_not_charged"] == 0
    assert ours["cancelled_but_charged"] == 0
    # Each order is paid, cancelled or still on its way: none vanished.
    assert ours["paid"] + ours["compensated"] + ours["pending"] + ours["unknown"] == ours["orders"]


@pytest.mark.parametrize(
    ("charges", "orders", "expected"),
    [
        pytest.param(
            [("a", False), ("b", False), ("b", False), ("c", False), ("d", True)],
            {"a": "paid", "b": "paid"},
            {"charged": 3, "charged_twice": 1, "lost": 1, "refunded": 1},
            id="twice-and-lost",
        ),
        pytest.param(
            [("a", True), ("b", False)],
            {"a": "cancelled", "b": "cancelled", "c": "paid"},
            {"cancelled_but_charged": 1, "paid_not_charged": 1, "lost": 0},
            id="inconsistent",
        ),
    ],
)
def test_ledger_check(
    charges: list[tuple[str, bool]], orders: dict[str, str], expected: dict[str, int]
) -> None:
    found = ledger_check(
        [{"order_id": o, "cancelled": c} for o, c in charges],
        orders,
        {"outbox": {"payments": {"pending": 2, "dispatching": 1, "unknown": 4}}},
    )
    assert found | expected == found
    assert found["charges"] == len(charges)
    assert found["orders"] == len(orders)
    assert (found["pending"], found["unknown"]) == (3, 4)


def test_the_providers_ledger_command_lists_every_charge() -> None:
    with PaymentProvider() as provider, httpx.Client(base_url=provider.url) as client:
        client.post("/charges", json={"order_id": "u1-1", "amount": 42})
        client.post("/charges", json={"order_id": "u1-1", "amount": 42})
        client.post("/charges/u1-1/cancel")
        line = ledger(provider)
    assert "\n" not in line
    assert json.loads(line) == {
        "charges": [
            {
                "id": f"ch_00000{n}",
                "order_id": "u1-1",
                "amount": 42,
                "idempotency_key": None,
                "cancelled": True,
            }
            for n in (1, 2)
        ]
    }


def _stopped_cleanly(proc: subprocess.Popen[str], stderr: str, children: Iterable[int]) -> None:
    """Interrupted: exit status 130, no traceback, and no child left running."""
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    for child in children:
        assert (
            not Path(f"/proc/{child}").exists()
            or "Z" in (Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0])
        ), f"child {child} left behind"


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
    _stopped_cleanly(proc, stderr, children)


def test_ctrl_c_while_the_children_start_leaves_none_behind() -> None:
    """Interrupted before every child answered READY: the one starting is stopped too."""
    proc = subprocess.Popen(
        [*DEMO, "--duration", "30", "--pay-clients", "10", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while not seen and proc.poll() is None and time.monotonic() < deadline:
            seen.update(_children_of(proc.pid))
            time.sleep(0.005)
        assert seen, "no child started"
        assert _sockets_of(proc.pid) == 0, "the run began: this is the other test's case"
        proc.send_signal(signal.SIGINT)
        seen.update(_children_of(proc.pid))
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    _stopped_cleanly(proc, stderr, seen)


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
