"""The storm, live: the same shop app through plain httpx and through seawall.

Everything runs on loopback: two fake payment providers (one per variant,
scripted identically) and the two app variants as child processes, and a
traffic generator here. The payments dependency goes through a scripted storm
while the terminal shows each variant's routes and dependencies live; a
summary compares the two runs at the end, and checks each shop's orders
against its provider's ledger.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from .replicas import Fleet, ReplicasError, RoundRobin, failing_since, merge_stats

VARIANTS = ("plain", "seawall")
# Loopback HTTP only: one TLS context for every simulated user's client instead of
# one each (loading the CA bundle costs ~30 ms).
_PLAIN_HTTP = ssl.create_default_context()
ROUTES = ("/catalog", "/pay")


@dataclass(frozen=True)
class Phase:
    name: str
    share: float  # of the run's duration
    payments: str  # the upstream's fault, as a command (see seawall._demo.upstream)


SCENARIOS: dict[str, tuple[Phase, ...]] = {
    "storm": (
        Phase("healthy", 0.2, "ok"),
        Phase("payments slow (10 s)", 0.35, "latency 10"),
        Phase("payments failing (500)", 0.2, "error 500"),
        Phase("payments recovered", 0.25, "ok"),
    ),
    "hang": (
        Phase("healthy", 0.25, "ok"),
        Phase("payments hung", 0.5, "hang"),
        Phase("payments recovered", 0.25, "ok"),
    ),
    "outage": (
        Phase("healthy", 0.25, "ok"),
        Phase("payments failing (500)", 0.5, "error 500"),
        Phase("payments recovered", 0.25, "ok"),
    ),
}


#: One request as the traffic generator saw it: (end, seconds, status).
Sample = tuple[float, float, str]


@dataclass
class RouteStats:
    samples: list[Sample] = field(default_factory=list)

    def add(self, end: float, seconds: float, status: str) -> None:
        self.samples.append((end, seconds, status))

    def window(self, since: float) -> list[Sample]:
        return [s for s in self.samples if s[0] >= since]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of *values*; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(samples: list[Sample]) -> dict[str, Any]:
    latencies = [s[1] for s in samples]
    statuses = Counter(s[2] for s in samples)
    errors = sum(n for status, n in statuses.items() if not status.startswith("2"))
    return {
        "requests": len(samples),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "errors": errors,
        "statuses": dict(sorted(statuses.items())),
    }


def _failed(status: str) -> bool:
    """Whether a customer sees *status* as a failed payment (and clicks again)."""
    return status in ("timeout", "error") or status.startswith("5")


#: Outbox states that are not settled yet.
_OPEN_STATES = ("pending", "dispatching", "unknown")


def _unsettled(stats: dict[str, Any]) -> int:
    """Outbox entries of a shop still open (0 for a shop without an outbox)."""
    outbox = stats.get("outbox")
    if outbox is None:
        return 0 if stats else 1  # no figures yet: not known to be settled
    return sum(n for states in outbox.values() for s, n in states.items() if s in _OPEN_STATES)


def ledger_check(
    charges: list[dict[str, Any]], orders: dict[str, str], stats: dict[str, Any]
) -> dict[str, Any]:
    """A shop's orders against its provider's ledger.

    ``charges`` are the provider's (``order_id``, ``cancelled``, ...),
    ``orders`` the shop's (id -> status), ``stats`` its last ``/_stats``.
    """
    live = Counter(c["order_id"] for c in charges if not c["cancelled"])
    found: dict[str, Any] = {
        "charges": len(charges),  # charges the provider made, refunded ones included
        "refunded": sum(1 for c in charges if c["cancelled"]),
        "charged": len(live),  # orders the provider holds a live charge for
        "orders": len(orders),  # orders the shop recorded
        "paid": sum(1 for status in orders.values() if status == "paid"),
        # The two ways a payment goes wrong:
        "charged_twice": sum(1 for n in live.values() if n > 1),
        "lost": sum(1 for order in live if order not in orders),
        # And the two inconsistencies a shop could add (0 for both, so far):
        "paid_not_charged": sum(1 for o, st in orders.items() if st == "paid" and o not in live),
        "cancelled_but_charged": sum(
            1 for o, st in orders.items() if st == "cancelled" and o in live
        ),
    }
    outbox = stats.get("outbox")
    if outbox is not None:
        # The charges still on their way (refunds are not orders of their own).
        states = outbox.get("payments", {})
        found |= {
            "verified": stats.get("verified", {}).get("succeeded", 0),
            "compensated": sum(1 for status in orders.values() if status == "cancelled"),
            "pending": states.get("pending", 0) + states.get("dispatching", 0),
            "unknown": states.get("unknown", 0),
        }
    return found


class DemoError(Exception):
    """A failure to start the demo, with a message for the terminal."""


class _Child:
    """A child process that prints ``READY <port>`` once it serves."""

    def __init__(
        self, variant: str, args: list[str], env: dict[str, str], *, stdin: bool = False
    ) -> None:
        self.variant = variant
        # stderr to a file, not a pipe: an unread pipe fills up and blocks the child.
        self.errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=subprocess.PIPE,
            stderr=self.errors,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            text=True,
            env=env,
        )
        try:
            line = self.proc.stdout.readline().strip() if self.proc.stdout else ""
        except BaseException:
            # Ctrl-C (or any error) while it starts: nobody else holds this
            # child yet, so it is stopped here rather than left running.
            self.stop()
            raise
        if not line.startswith("READY "):
            self.proc.wait(timeout=10)
            self.errors.seek(0)
            err = self.errors.read()
            self.stop()
            raise DemoError(
                f"the {variant} app did not start: {line.removeprefix('ERROR ') or err.strip()[-500:]}"
            )
        self.url = f"http://127.0.0.1:{line.split()[1]}"

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def ask(self, command: str) -> str:
        """Send *command* and read the one line it answers (blocking)."""
        self.send(command)
        assert self.proc.stdout is not None
        return self.proc.stdout.readline()

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.errors.close()


def _wait_serving(child: _Child, within: float = 30.0) -> None:
    """Until *child* answers ``/_stats`` (its lifespan, the database set up, has run)."""
    deadline = time.monotonic() + within
    while True:
        try:
            if httpx.get(child.url + "/_stats", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if child.proc.poll() is not None or time.monotonic() > deadline:
            raise DemoError(f"the {child.variant} app did not start serving")
        time.sleep(0.05)  # its start-up: a fraction of a second


@dataclass
class Settings:
    duration: float = 40.0
    scenario: str = "storm"
    pay_clients: int = 100
    catalog_clients: int = 10
    think: float = 1.0
    request_timeout: float = 15.0
    base_port: int = 0
    otlp_endpoint: str | None = None
    json_only: bool = False
    #: How long an order may wait for its charge in the seawall shop before it is
    #: cancelled (None: half the duration, at least 10 s).
    payment_window: float | None = None
    #: After the run, how long the seawall shop's outbox may take to settle.
    drain: float = 10.0
    #: Replicas of each shop (the seawall ones share state on Redis: see replicas.py).
    replicas: int = 1
    #: The seawall replicas' Redis (None: an embedded redis-server).
    redis: str | None = None


class Demo:
    def __init__(self, settings: Settings) -> None:
        if settings.scenario not in SCENARIOS:
            raise DemoError(
                f"unknown scenario {settings.scenario!r} (choose from {', '.join(SCENARIOS)})"
            )
        if not settings.duration > 0:
            raise DemoError(f"--duration must be > 0, got {settings.duration!r}")
        if settings.replicas < 1:
            raise DemoError(f"--replicas must be at least 1, got {settings.replicas!r}")
        if settings.redis and settings.replicas < 2:
            raise DemoError("--redis is for --replicas 2 or more")
        self.s = settings
        self.phases = SCENARIOS[settings.scenario]
        self.upstreams: dict[str, _Child] = {}
        #: Each variant's first replica (the only one without --replicas): the
        #: shop whose orders and outbox the summary reads (its replicas share them).
        self.apps: dict[str, _Child] = {}
        #: Each variant's replicas, and the round robin the traffic takes over them.
        self.replica_apps: dict[str, list[_Child]] = {v: [] for v in VARIANTS}
        self.spread: dict[str, RoundRobin] = {}
        self.fleet = Fleet(settings.replicas, settings.redis) if settings.replicas > 1 else None
        #: The summary's "replicas" entry (with --replicas).
        self.replica_summary: dict[str, Any] | None = None
        self.stats = {v: {r: RouteStats() for r in ROUTES} for v in VARIANTS}
        self.deps: dict[str, dict[str, Any]] = {v: {} for v in VARIANTS}
        self.phase = ""
        self.started = 0.0
        #: (phase name, start, end) in seconds since the run started.
        self.phase_times: list[tuple[str, float, float]] = []
        #: Each variant's dependency figures at the end of each phase (cumulative).
        self.phase_deps: dict[str, dict[int, dict[str, Any]]] = {v: {} for v in VARIANTS}
        #: Each variant's last /_stats (orders and, for seawall, the outbox).
        self.app_stats: dict[str, dict[str, Any]] = {v: {} for v in VARIANTS}
        #: At the end: each variant's orders (id -> status) and its provider's charges.
        self.orders: dict[str, dict[str, str]] = {v: {} for v in VARIANTS}
        self.charges: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        #: Seconds the seawall shop's outbox took to settle after the run (None: it did not).
        self.drained_s: float | None = None
        self.tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def payment_window(self) -> float:
        if self.s.payment_window is not None:
            return self.s.payment_window
        return max(10.0, 0.5 * self.s.duration)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        env = dict(os.environ)
        if self.s.otlp_endpoint:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.s.otlp_endpoint
        if self.fleet is not None:
            try:
                self.fleet.start_redis()
            except ReplicasError as exc:
                raise DemoError(str(exc)) from exc
        # Each shop's orders in a SQLite file of its own (shared by its replicas),
        # gone after the run.
        self.tmp = tempfile.TemporaryDirectory(prefix="seawall-demo-")
        n = self.s.replicas
        for i, variant in enumerate(VARIANTS):
            upstream = _Child(f"{variant} upstream", ["seawall._demo.upstream"], env, stdin=True)
            self.upstreams[variant] = upstream
            db = os.path.join(self.tmp.name, f"shop-{variant}.db")
            # With replicas, each calls the provider through its own port of a meter.
            targets = (
                [upstream.url] if self.fleet is None else self.fleet.meter(variant, upstream.url)
            )
            child_env = env
            if self.fleet is not None and variant == "seawall":
                child_env = env | self.fleet.env()
            for j, target in enumerate(targets):
                port = self.s.base_port + i * n + j if self.s.base_port else 0
                name = variant if n == 1 else f"{variant} replica {j + 1}"
                child = _Child(
                    name,
                    [
                        "seawall._demo.serve",
                        variant,
                        target,
                        str(port),
                        db,
                        str(self.payment_window),
                    ],
                    child_env,
                )
                self.replica_apps[variant].append(child)
                if n > 1:  # the next replica starts once this one has set its database up
                    _wait_serving(child)
            self.apps[variant] = self.replica_apps[variant][0]
            self.spread[variant] = RoundRobin([c.url for c in self.replica_apps[variant]])

    def stop(self) -> None:
        replicas = [c for children in self.replica_apps.values() for c in children]
        for child in [*replicas, *self.upstreams.values()]:
            child.stop()
        if self.fleet is not None:
            self.fleet.stop()
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None

    # -- the run ---------------------------------------------------------------------------

    def set_payments(self, fault: str) -> None:
        for upstream in self.upstreams.values():
            upstream.send(f"/charges {fault}")

    async def run(self) -> dict[str, Any]:
        self.set_payments("ok")
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        async with httpx.AsyncClient(limits=limits, timeout=self.s.request_timeout) as client:
            # Warm up: the catalog fallback needs one good response to serve stale
            # (in each replica: the catalog's cache is each replica's own).
            for variant in VARIANTS:
                for child in self.replica_apps[variant]:
                    await client.get(child.url + "/catalog")
            self.started = time.monotonic()
            end = self.started + self.s.duration
            async with anyio.create_task_group() as tg:
                for variant in VARIANTS:
                    for route, n in (
                        ("/pay", self.s.pay_clients),
                        ("/catalog", self.s.catalog_clients),
                    ):
                        for i in range(n):
                            tg.start_soon(self._worker, client, variant, route, end, i)
                    tg.start_soon(self._poll_stats, client, variant, end)
                if not self.s.json_only:
                    tg.start_soon(self._display, end)
                if self.fleet is not None:
                    seawall_urls = [c.url for c in self.replica_apps["seawall"]]
                    tg.start_soon(self.fleet.watch, client, seawall_urls, end)
                await self._script(client, end)
            # Every customer has had an answer. The seawall shop may still be
            # charging (its outbox): let it settle, bounded, then check both
            # shops' orders against their providers' ledgers.
            await self._drain(client)
            for variant in VARIANTS:
                await self._fetch_stats(client, variant)
                await self._fetch_ledger(client, variant)
            if self.fleet is not None:
                since = failing_since(self.phase_times, [p.payments for p in self.phases])
                self.replica_summary = await anyio.to_thread.run_sync(
                    self.fleet.summary, self.started, since
                )
        return self.summary()

    async def _drain(self, client: httpx.AsyncClient) -> None:
        began = time.monotonic()
        while True:
            await self._fetch_stats(client, "seawall")
            if not _unsettled(self.app_stats["seawall"]):
                self.drained_s = round(time.monotonic() - began, 2)
                return
            if time.monotonic() - began >= self.s.drain:
                return
            await anyio.sleep(0.1)

    async def _fetch_ledger(self, client: httpx.AsyncClient, variant: str) -> None:
        """The shop's orders and its provider's charges. Without them there is no
        ledger check: better no summary than one that claims a clean ledger."""
        try:
            response = await client.get(self.apps[variant].url + "/_orders", timeout=10.0)
            self.orders[variant] = response.json()["orders"]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise DemoError(f"could not read the {variant} shop's orders: {exc!r}") from exc
        line = ""
        with anyio.move_on_after(10):
            line = await anyio.to_thread.run_sync(
                self.upstreams[variant].ask, "ledger", abandon_on_cancel=True
            )
        try:
            self.charges[variant] = json.loads(line)["charges"]
        except (ValueError, KeyError) as exc:
            raise DemoError(
                f"could not read the {variant} provider's ledger: {line[:200]!r}"
            ) from exc

    async def _script(self, client: httpx.AsyncClient, end: float) -> None:
        at = self.started
        async with anyio.create_task_group() as tg:
            for i, phase in enumerate(self.phases):
                self.phase = phase.name
                self.set_payments(phase.payments)
                began = time.monotonic() - self.started
                at += phase.share * self.s.duration
                await anyio.sleep(max(0.0, min(at, end) - time.monotonic()))
                self.phase_times.append((phase.name, began, time.monotonic() - self.started))
                # The outcomes so far, to tell each phase's apart; in the
                # background, so that the next phase starts on time.
                tg.start_soon(self._snapshot_phase, client, i)
        self.phase = "done"

    async def _snapshot_phase(self, client: httpx.AsyncClient, i: int) -> None:
        for variant in VARIANTS:
            await self._fetch_stats(client, variant)
            self.phase_deps[variant][i] = copy.deepcopy(self.deps[variant])

    async def _worker(
        self, shared: httpx.AsyncClient, variant: str, route: str, end: float, i: int
    ) -> None:
        spread = self.spread[variant]

        def url() -> str:  # each request to the next replica (the only one, without --replicas)
            return spread() + route

        stats = self.stats[variant][route]
        # Each simulated user has a connection of its own (one per replica), as a
        # browser would: one pool shared by hundreds of busy requests costs
        # httpcore time quadratic in their number, and the generator would
        # measure itself.
        n = self.s.replicas
        async with httpx.AsyncClient(
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
            timeout=self.s.request_timeout,
            verify=_PLAIN_HTTP,
        ) as client:
            await self._user(client, url, stats, route, end, i)

    async def _user(
        self,
        client: httpx.AsyncClient,
        url: Callable[[], str],
        stats: RouteStats,
        route: str,
        end: float,
        i: int,
    ) -> None:
        # Spread the clients' first requests over one think time.
        await anyio.sleep(self.s.think * i / max(1, self.s.pay_clients))
        # Each client thinks for a random 0.5 to 1.5 think times (the same draws in
        # both shops): with a fixed pause, clients refused or answered together
        # come back together, and the traffic turns into a burst a second that no
        # population of users makes.
        rng = random.Random(f"{route} {i}")
        orders = 0
        while time.monotonic() < end:
            if route == "/catalog":
                await self._request(client, "GET", url(), stats)
            else:
                # A customer pays an order of their own choosing; if the shop
                # fails them (a 5xx, no answer), they click again once or twice.
                orders += 1
                order = {"order_id": f"u{i}-{orders}", "amount": 42}
                clicks = 2 if rng.random() < 0.5 else 3
                for _ in range(clicks):
                    status = await self._request(client, "POST", url(), stats, json=order)
                    if not _failed(status) or time.monotonic() >= end:
                        break
                    await anyio.sleep(self.s.think * (0.5 + rng.random()))
            await anyio.sleep(self.s.think * (0.5 + rng.random()))

    async def _request(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        stats: RouteStats,
        **kwargs: Any,
    ) -> str:
        t0 = time.monotonic()
        try:
            response = await client.request(method, url, **kwargs)
            status = str(response.status_code)
        except httpx.TimeoutException:
            status = "timeout"
        except httpx.HTTPError:
            status = "error"
        t1 = time.monotonic()
        stats.add(t1, t1 - t0, status)
        return status

    async def _fetch_stats(self, client: httpx.AsyncClient, variant: str) -> None:
        try:
            found = []
            for child in self.replica_apps[variant]:
                response = await client.get(child.url + "/_stats", timeout=2.0)
                found.append(response.json())
            stats = found[0] if len(found) == 1 else merge_stats(found)
            self.deps[variant] = stats["dependencies"]
            self.app_stats[variant] = stats
        except (httpx.HTTPError, ValueError, KeyError):
            pass

    async def _poll_stats(self, client: httpx.AsyncClient, variant: str, end: float) -> None:
        while time.monotonic() < end:
            await self._fetch_stats(client, variant)
            await anyio.sleep(0.5)

    # -- output ---------------------------------------------------------------------------

    def _between(self, variant: str, route: str, t0: float, t1: float) -> list[Sample]:
        """The samples of *route* that ended between t0 and t1 (seconds since the start)."""
        a, b = self.started + t0, self.started + t1
        return [s for s in self.stats[variant][route].samples if a <= s[0] < b]

    def _phase_outcomes(self, variant: str, i: int) -> dict[str, dict[str, int]]:
        """Each dependency's call outcomes during phase *i* (from the app's counts)."""
        snapshots = self.phase_deps[variant]
        if i not in snapshots:
            return {}
        after = snapshots[i]
        before = snapshots.get(i - 1, {})
        found: dict[str, dict[str, int]] = {}
        for name, d in sorted(after.items()):
            was = before.get(name, {}).get("outcomes", {})
            delta = {k: n - was.get(k, 0) for k, n in d.get("outcomes", {}).items()}
            found[name] = {k: n for k, n in sorted(delta.items()) if n}
        return found

    def summary(self) -> dict[str, Any]:
        runs: dict[str, Any] = {}
        for variant in VARIANTS:
            deps = {
                name: {"outcomes": dict(sorted(d.get("outcomes", {}).items()))}
                | ({"retries": d["retries"], "fallbacks": d["fallbacks"]} if "retries" in d else {})
                for name, d in sorted(self.deps[variant].items())
            }
            runs[variant] = {
                "routes": {r: summarize(self.stats[variant][r].samples) for r in ROUTES},
                "dependencies": deps,
                "payments": ledger_check(
                    self.charges[variant], self.orders[variant], self.app_stats[variant]
                ),
                "phases": [
                    {
                        "phase": name,
                        "start_s": round(t0, 2),
                        "end_s": round(t1, 2),
                        "routes": {r: summarize(self._between(variant, r, t0, t1)) for r in ROUTES},
                        "outcomes": self._phase_outcomes(variant, i),
                    }
                    for i, (name, t0, t1) in enumerate(self.phase_times)
                ],
            }
        return {
            "scenario": self.s.scenario,
            "duration_s": self.s.duration,
            "clients": {"/pay": self.s.pay_clients, "/catalog": self.s.catalog_clients},
            "payment_window_s": self.payment_window,
            "drained_s": self.drained_s,
            "runs": runs,
            "comparison": self._comparison(runs),
        } | ({"replicas": self.replica_summary} if self.fleet is not None else {})

    def _comparison(self, runs: dict[str, Any]) -> dict[str, Any]:
        """The two figures the demo is judged by: payments made, and /catalog's p99
        during the storm (every phase after the first) against its healthy p99
        (the second half of the first phase: the first half has the start-up,
        a hundred clients connecting at once)."""
        _, start, end = self.phase_times[0] if self.phase_times else ("", 0.0, 0.0)
        healthy_from, healthy_end = self.started + (start + end) / 2, self.started + end
        catalog: dict[str, Any] = {}
        for variant in VARIANTS:
            samples = self.stats[variant]["/catalog"].samples
            healthy = [s[1] for s in samples if healthy_from <= s[0] < healthy_end]
            storm = [s[1] for s in samples if s[0] >= healthy_end]
            h, st = percentile(healthy, 99) * 1000, percentile(storm, 99) * 1000
            catalog[variant] = {
                "healthy_p99_ms": round(h, 1),
                "storm_p99_ms": round(st, 1),
                "ratio": round(st / h, 2) if h else None,
            }
        return {
            # Orders the shop recorded as paid at the end: the plain shop's /pay
            # answered 200, the seawall shop's outbox got the charge through.
            "payments_completed": {v: runs[v]["payments"]["paid"] for v in VARIANTS},
            "catalog_p99": catalog,
            "ledger": {
                v: {k: runs[v]["payments"][k] for k in ("charged_twice", "lost")} for v in VARIANTS
            },
        }

    def _live_table(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        now = time.monotonic()
        left = max(0.0, self.started + self.s.duration - now)
        title = Text.assemble(
            ("seawall demo", "bold"),
            f"  scenario {self.s.scenario}  ·  phase: ",
            (self.phase, "bold yellow"),
            f"  ·  {left:4.1f} s left",
        )
        routes = Table(title="routes (last 5 s)", expand=True)
        for col in ("variant", "route", "req/s", "p50 ms", "p99 ms", "errors"):
            routes.add_column(col, justify="right" if col not in ("variant", "route") else "left")
        for variant in VARIANTS:
            for route in ROUTES:
                recent = self.stats[variant][route].window(now - 5.0)
                s = summarize(recent)
                rate = len(recent) / 5.0
                err = f"{100 * s['errors'] / s['requests']:.0f} %" if s["requests"] else "-"
                style = "red" if s["requests"] and s["errors"] / s["requests"] > 0.05 else ""
                routes.add_row(
                    variant,
                    route,
                    f"{rate:.0f}",
                    f"{s['p50_ms']:.0f}",
                    f"{s['p99_ms']:.0f}",
                    Text(err, style=style),
                )
        deps = Table(title="seawall's dependencies", expand=True)
        for col in ("dependency", "breaker", "in use/limit", "retries", "fallbacks", "outcomes"):
            deps.add_column(col)
        for name, d in sorted(self.deps["seawall"].items()):
            state = d.get("breaker") or "-"
            colour = {"closed": "green", "half_open": "yellow"}.get(state, "red")
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(d.get("outcomes", {}).items()))
            bulkhead = f"{d.get('bulkhead_in_use', '-')}/{d.get('bulkhead_limit', '-')}"
            if d.get("bulkhead_min_rtt_ms") is not None:
                bulkhead += " adaptive"
            deps.add_row(
                name,
                Text(state, style=colour),
                bulkhead,
                str(d.get("retries", 0)),
                str(d.get("fallbacks", 0)),
                outcomes,
            )
        return Group(title, self._orders_line(), routes, deps)

    def _orders_line(self) -> Any:
        from rich.text import Text

        parts: list[str] = []
        for variant in VARIANTS:
            stats = self.app_stats[variant]
            counts = ", ".join(f"{k} {n}" for k, n in sorted(stats.get("orders", {}).items()))
            part = f"{variant}: {counts or '-'}"
            outbox = stats.get("outbox", {}).get("payments")
            if outbox:
                open_ = ", ".join(f"{k} {outbox[k]}" for k in _OPEN_STATES if outbox.get(k))
                part += f" (outbox: {open_ or 'settled'})"
            parts.append(part)
        return Text("orders  " + "  ·  ".join(parts))

    async def _display(self, end: float) -> None:
        from rich.live import Live

        with Live(self._live_table(), refresh_per_second=4, transient=False) as live:
            while time.monotonic() < end:
                await anyio.sleep(0.25)
                live.update(self._live_table())

    @staticmethod
    def _ledger_table(summary: dict[str, Any]) -> Any:
        from rich.table import Table

        table = Table(title="payments: each shop's orders against its provider's ledger")
        for name in (
            "variant",
            "charged",
            "orders",
            "paid",
            "verified",
            "compensated",
            "open",
            "twice",
            "lost",
        ):
            table.add_column(name)
        for variant in VARIANTS:
            p = summary["runs"][variant]["payments"]
            has_outbox = "pending" in p
            table.add_row(
                variant,
                str(p["charged"]),
                str(p["orders"]),
                str(p["paid"]),
                str(p["verified"]) if has_outbox else "-",
                str(p["compensated"]) if has_outbox else "-",
                str(p["pending"] + p["unknown"]) if has_outbox else "-",
                str(p["charged_twice"]),
                str(p["lost"]),
            )
        return table

    def print_summary(self, summary: dict[str, Any]) -> None:
        from rich.console import Console
        from rich.table import Table

        console = Console()
        console.print()
        table = Table(
            title=f"summary: scenario {summary['scenario']}, {summary['duration_s']:g} s per run, both runs side by side"
        )
        for col in ("variant", "route", "requests", "p50 ms", "p99 ms", "errors", "statuses"):
            table.add_column(col)
        for variant in VARIANTS:
            for route in ROUTES:
                r = summary["runs"][variant]["routes"][route]
                table.add_row(
                    variant,
                    route,
                    str(r["requests"]),
                    f"{r['p50_ms']:.0f}",
                    f"{r['p99_ms']:.0f}",
                    str(r["errors"]),
                    ", ".join(f"{k}: {v}" for k, v in r["statuses"].items()),
                )
        console.print(table)
        plain = summary["runs"]["plain"]["routes"]["/catalog"]
        ours = summary["runs"]["seawall"]["routes"]["/catalog"]
        console.print(
            f"/catalog over the whole run: p99 {plain['p99_ms']:.0f} ms and {plain['errors']} errors "
            f"with a shared httpx client; p99 {ours['p99_ms']:.0f} ms and {ours['errors']} errors with seawall."
        )
        console.print(self._ledger_table(summary))
        comparison = summary["comparison"]
        paid = comparison["payments_completed"]
        console.print(
            f"payments completed (orders paid at the end): {paid['plain']} with a shared httpx "
            f"client, {paid['seawall']} with seawall."
        )
        ledger = comparison["ledger"]
        console.print(
            f"charged twice: {ledger['plain']['charged_twice']} with a shared httpx client, "
            f"{ledger['seawall']['charged_twice']} with seawall; lost (charged, no order): "
            f"{ledger['plain']['lost']} and {ledger['seawall']['lost']}."
        )
        ours = summary["runs"]["seawall"]["payments"]
        if summary["drained_s"] is None:
            console.print(
                f"seawall's outbox had not settled {self.s.drain:g} s after the run: "
                f"{ours['pending']} charges pending, {ours['unknown']} unknown."
            )
        for variant, label in (("plain", "a shared httpx client"), ("seawall", "seawall")):
            c = comparison["catalog_p99"][variant]
            ratio = f"{c['ratio']:.2f}x" if c["ratio"] is not None else "-"
            console.print(
                f"/catalog p99 with {label}: {c['healthy_p99_ms']:.0f} ms healthy, "
                f"{c['storm_p99_ms']:.0f} ms during the storm ({ratio})."
            )
        if summary.get("replicas"):
            self._print_replicas(console, summary["replicas"])

    @staticmethod
    def _print_replicas(console: Any, replicas: dict[str, Any]) -> None:
        peak = replicas["provider_peak_concurrency"]
        console.print(
            f"{replicas['count']} replicas of each shop ({replicas['redis']} Redis): the provider "
            f"held at most {peak.get('plain', 0)} payments requests at once from the plain "
            f"shop's, {peak.get('seawall', 0)} from seawall's (global cap "
            f"{replicas['global_cap']})."
        )
        follow = replicas["breaker_followed"]
        if follow is None:
            console.print("seawall's payments breakers: no replica's opened.")
            return
        second = follow["second"]
        first = f"seawall's payments breakers: replica {follow['first']['replica']} opened first; "
        if second["cause"] is None:
            console.print(
                f"{first}replica {second['replica']} stayed closed, its own calls healthy enough "
                f"(it sent {second['calls_before_open']} payments requests from the start of "
                f"the provider's trouble, {second['calls_after_first_opened']} after the first "
                "one opened)."
            )
            return
        how = (
            "followed the first one's verdict"
            if second["cause"] == "shared"
            else "opened on its own calls"
        )
        console.print(
            f"{first}replica {second['replica']} {how} {second['opened_after_first_s']:.2f} s "
            f"later, having sent {second['calls_before_open']} payments requests from the start "
            f"of the provider's trouble ({second['calls_after_first_opened']} after the first "
            "one opened)."
        )


def run_demo(settings: Settings) -> int:
    """Run the demo; returns the process exit status."""
    try:
        demo = Demo(settings)
    except DemoError as exc:
        print(f"seawall demo: {exc}", file=sys.stderr)
        return 2
    try:
        demo.start()
        summary = anyio.run(demo.run)
    except DemoError as exc:
        print(f"seawall demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nseawall demo: interrupted, stopping", file=sys.stderr)
        return 130
    finally:
        demo.stop()
    if settings.json_only:
        print(json.dumps(summary, indent=2))
    else:
        demo.print_summary(summary)
    return 0
