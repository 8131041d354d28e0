"""Replicas as real processes (uvicorn apps, shared_app.py) on a real Redis and a real
upstream (FaultyUpstream), in real time with short leases.

The assertions are about behaviour (who opens, how many calls reached the
upstream, the peak concurrency it saw); the times observed are printed, and
only bounded generously so that a loaded machine does not fail them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from shared_redis_server import RedisServer, free_port

from seawall.testing._upstream import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

#: shared_app.py's status app token.
ADMIN_TOKEN = "shared-app-admin-token"

APP = Path(__file__).with_name("shared_app.py")
SYNC = 0.1
LEASE = 1.0


class App:
    """One replica: a uvicorn process running shared_app.py."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        env = {**os.environ, "SHARED_APP": json.dumps(config), "PORT": str(self.port)}
        env["PYTHONPATH"] = os.pathsep.join([str(APP.parent), env.get("PYTHONPATH", "")])
        self.log = workdir / f"app-{self.port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(APP)], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        """Poll until the app answers (its start-up, not a timer of ours)."""
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/state", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"app not ready: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def upstream() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as server:
        yield server


@pytest.fixture
def start_apps(
    tmp_path: Path, redis_server: RedisServer, namespace: str, upstream: FaultyUpstream
) -> Iterator[Any]:
    apps: list[App] = []

    def start(n: int, dependency: dict[str, Any], **state: Any) -> list[App]:
        config = {
            "redis": redis_server.url,
            "namespace": namespace,
            "upstream": upstream.url,
            "dependency": dependency,
            "sync_interval": SYNC,
            "lease_ttl": LEASE,
            **state,
        }
        new = [App(tmp_path, config) for _ in range(n)]
        apps.extend(new)
        for app in new:
            app.wait_ready()
        return new

    yield start
    for app in apps:
        app.stop()


async def call(client: httpx.AsyncClient, app: App, path: str) -> dict[str, Any]:
    response = await client.get(f"{app.url}/call", params={"path": path}, timeout=30)
    return dict(response.json())


async def snapshot(client: httpx.AsyncClient, app: App) -> dict[str, Any]:
    response = await client.get(f"{app.url}/state", timeout=10)
    return dict(response.json()["dependencies"]["pay"])


async def wait_for(check: Any, what: str, limit: float = 10.0) -> float:
    """Poll *check()* (an app's state, over HTTP) until true; the seconds it took."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > limit:
            raise AssertionError(f"{what}: not within {limit} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


BREAKER = {
    "retry": False,
    "breaker": {"minimum_calls": 5, "window_size": 10, "open_duration": 30},
    "shared": {"breaker": "advisory"},
}


async def test_the_replica_whose_path_fails_opens_and_the_other_keeps_serving(
    start_apps: Any, upstream: FaultyUpstream
) -> None:
    upstream.route("/a", Fault.error(503))
    upstream.route("/b", Fault.ok())
    a, b = start_apps(2, BREAKER)
    async with httpx.AsyncClient() as client:
        for _ in range(6):
            await call(client, a, "/a")
        assert (await snapshot(client, a))["breaker"]["state"] == "open"

        async def b_heard() -> bool:
            shared = (await snapshot(client, b))["shared"]
            return bool(shared["tripped_replicas"] == 1 and shared["live_replicas"] == 2)

        await wait_for(b_heard, "b hears of a's open breaker")
        for _ in range(5):
            assert await call(client, b, "/b") == {"outcome": "status-200", "breaker": "closed"}
        assert (await snapshot(client, b))["shared"]["verdict"] == "closed"


async def test_a_quiet_replica_follows_two_open_ones_within_sync_intervals(
    start_apps: Any, upstream: FaultyUpstream
) -> None:
    for path in ("/a", "/b", "/c"):
        upstream.route(path, Fault.error(503))
    a, b, c = start_apps(3, BREAKER)
    async with httpx.AsyncClient() as client:
        started = time.monotonic()
        assert (await call(client, c, "/c"))["outcome"] == "status-503"
        await asyncio.gather(*(call(client, a, "/a") for _ in range(6)))
        await asyncio.gather(*(call(client, b, "/b") for _ in range(6)))
        opened = time.monotonic()

        async def c_open() -> bool:
            return bool((await snapshot(client, c))["breaker"]["state"] == "open")

        took = await wait_for(c_open, "c follows")
        print(f"c opened {took:.3f} s after a and b (sync interval {SYNC} s)")
        print(f"c's first call to its opening: {opened - started + took:.3f} s (c: 1 call/s)")
        assert (await call(client, c, "/c"))["outcome"] == "circuit_open"  # its next call
        assert upstream.count("/c") <= 2
        assert (await snapshot(client, c))["shared"]["cause"] == "shared"


async def test_force_open_and_reset_across_the_cluster_reach_the_other_replica(
    start_apps: Any, upstream: FaultyUpstream
) -> None:
    """Through seawall's status app on A: ``?scope=cluster``, then ``reset`` the same way."""
    a, b = start_apps(2, BREAKER)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{a.url}/_resilience/pay/breaker/force-open?scope=cluster", headers=admin
        )
        assert response.status_code == 200
        assert response.json()["breaker"]["state"] == "forced_open"

        async def b_is(state: str) -> bool:
            return bool((await snapshot(client, b))["breaker"]["state"] == state)

        took = await wait_for(lambda: b_is("forced_open"), "b forced open")
        print(f"b forced open {took:.3f} s after a (sync interval {SYNC} s)")
        assert (await snapshot(client, b))["shared"]["override"] == "forced_open"
        response = await client.post(
            f"{a.url}/_resilience/pay/breaker/reset?scope=cluster", headers=admin
        )
        assert response.status_code == 200
        took = await wait_for(lambda: b_is("closed"), "b reset")
        print(f"b closed {took:.3f} s after a's reset (sync interval {SYNC} s)")


def peak_concurrency(upstream: FaultyUpstream, path: str, latency: float, since: float = 0) -> int:
    """The most requests the upstream held at once, each held *latency* s from arrival."""
    arrivals = sorted(r.at for r in upstream.requests(path) if r.at >= since)
    peak, j = 0, 0
    for i, at in enumerate(arrivals):
        while arrivals[j] <= at - latency:
            j += 1
        peak = max(peak, i - j + 1)
    return peak


@pytest.mark.slow
async def test_the_global_cap_holds_across_processes_and_a_killed_replica_frees_its_slots(
    start_apps: Any, upstream: FaultyUpstream
) -> None:
    upstream.route("/slow", Fault.latency(1.0))
    upstream.route("/hold", Fault.latency(8.0))
    dependency = {
        "retry": False,
        "breaker": False,
        "timeouts": {"attempt": 20, "total": 30, "read": 20},
        # A call waits up to 0.5 s for a slot: slots idle in one replica's pocket
        # (granted to calls that gave up) move to the other under pressure.
        "bulkhead": {"max_concurrent": 50, "max_wait": 0.5},
        "shared": {"bulkhead": {"max_concurrent": 20}},
    }
    # A grant later than budget lets a call go on under the replica's local share
    # (the documented price of a slow Redis): a generous budget keeps that rare on
    # a loaded machine, and every such call is counted.
    a, b = start_apps(2, dependency, budget=0.25)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=200)) as client:
        results = await asyncio.gather(
            *(call(client, app, "/slow") for app in (a, b) for _ in range(50))
        )
        outcomes = [r["outcome"] for r in results]
        peak = peak_concurrency(upstream, "/slow", 1.0)
        local = 0
        for app in (a, b):
            state = (await client.get(f"{app.url}/state")).json()["state"]
            local += state["local_decisions"].get("bulkhead", 0)
        print(f"peak {peak}, local decisions {local}, outcomes {sorted(set(outcomes))}")
        # The cap holds whatever the load (how near 100 calls got to it depends
        # on how fast two app processes run on a shared machine).
        assert peak <= 20 + local
        assert outcomes.count("status-200") == upstream.count("/slow")
        assert set(outcomes) <= {"status-200", "bulkhead_full"}

        # a holds slots in calls that hang, and is killed -9 with them.
        held = [asyncio.ensure_future(call(client, a, "/hold")) for _ in range(15)]
        while upstream.count("/hold") < 15:  # noqa: ASYNC110 - the upstream's count
            await asyncio.sleep(0.01)
        a.kill()
        killed = time.monotonic()
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        # b keeps 25 calls going: it holds the whole cap only once a's lease (and
        # its 15 slots) is swept. b's own count of the slots it holds says so,
        # however slowly its calls run on a loaded machine.
        upstream.clear()
        deadline = killed + 3 * (1.5 * LEASE + 1)
        reached = None
        pending: set[asyncio.Future[Any]] = set()
        while time.monotonic() < deadline and reached is None:
            while len(pending) < 25:
                pending.add(asyncio.ensure_future(call(client, b, "/slow")))
            _, pending = await asyncio.wait(pending, timeout=0.05)
            shared = (await snapshot(client, b))["shared"]
            if shared["bulkhead"]["held"] >= 20:
                reached = time.monotonic() - killed
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        print(f"b held all 20 slots {reached} s after a was killed (lease {LEASE} s)")
        assert reached is not None, "a's slots never came back to the cluster"
        state = (await client.get(f"{b.url}/state")).json()["state"]
        local = state["local_decisions"].get("bulkhead", 0)
        assert peak_concurrency(upstream, "/slow", 1.0) <= 20 + local


@pytest.mark.slow
async def test_the_shared_rate_holds_across_processes(
    start_apps: Any, upstream: FaultyUpstream
) -> None:
    rate, burst, ttl, seconds = 50.0, 10.0, 0.05, 4.0
    dependency = {
        "retry": False,
        "breaker": False,
        "rate_limit": {"rate": rate, "burst": burst},
        "shared": {"rate_limit": {"reserve_ttl": ttl}},
    }
    a, b = start_apps(2, dependency)
    upstream.route("/r", Fault.ok())
    async with httpx.AsyncClient() as client:
        params = {"rate": 100, "seconds": seconds, "path": "/r"}
        drives = await asyncio.gather(
            *(client.get(f"{app.url}/drive", params=params, timeout=60) for app in (a, b))
        )
    counts = [d.json() for d in drives]
    sent = upstream.count("/r")
    arrivals = sorted(r.at for r in upstream.requests("/r"))
    span = arrivals[-1] - arrivals[0]
    bound = rate * (seconds + ttl) + burst
    print(f"{sent} reached the upstream in {span:.3f} s (bound {bound}); per app {counts}")
    # The calls ran for `seconds` (the drives' pacing); arrival times at the upstream
    # carry both apps' scheduling jitter, so the bound is taken over `seconds`.
    assert sent <= bound
    assert sent >= 0.9 * bound
    assert sum(c.get("status-200", 0) for c in counts) == sent
    assert {k for c in counts for k in c} <= {"status-200", "rate_limited"}
