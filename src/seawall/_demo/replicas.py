"""``seawall demo --replicas N``: each shop as N replicas, the seawall ones sharing state.

The parts the runner puts together:

* :class:`EmbeddedRedis` and :func:`redis_for`: the Redis the seawall replicas
  share, a ``--redis`` URL or a ``redis-server`` started here (free loopback
  port, temp dir, nothing written to disk) when one is on the PATH;
* :func:`shared_registry`: the seawall shop's registry with a ``RedisState``
  and :data:`SHARED` (payments: an advisory breaker and a global cap of
  :data:`GLOBAL_CAP` calls in flight), chosen by the environment each replica
  is started with (:func:`replica_env`, :func:`from_env`);
* :class:`RoundRobin`: the traffic generator's requests, spread over the replicas;
* the **meter** (``python -m seawall._demo.replicas meter UPSTREAM N``): a
  proxy in front of the provider, one listening port per replica, that
  records each payments request's start (its first byte) and end (the
  answer's first byte, or the connection closed before one), and which
  replica sent it. The provider's concurrency is read from outside, as the
  provider would count it; :func:`peak_concurrency` and :func:`followed`
  turn the records into the summary's figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

import seawall

__all__ = [
    "GLOBAL_CAP",
    "PAYMENTS",
    "SHARED",
    "EmbeddedRedis",
    "Fleet",
    "Meter",
    "MeterChild",
    "Opening",
    "Record",
    "ReplicasError",
    "RoundRobin",
    "failing_since",
    "followed",
    "from_env",
    "merge_stats",
    "peak_concurrency",
    "redis_for",
    "replica_env",
    "shared_registry",
]

#: Payments' calls in flight across every replica of the seawall shop. Each
#: replica's outbox dispatcher sends at most 8 charges at once: 16 for two,
#: which this cap holds to 10 together.
GLOBAL_CAP = 10

#: The shared part of each dependency's policy in a seawall replica. A quorum
#: of one: with two replicas, one tripped replica is a verdict the other
#: follows while its own evidence is thin (a quorum of two would need both).
SHARED: dict[str, seawall.Shared] = {
    "payments": seawall.Shared(
        breaker="advisory",
        quorum=1,
        bulkhead=seawall.GlobalBulkhead(max_concurrent=GLOBAL_CAP),
    ),
}

#: The provider's payments requests, as ``METHOD PATH``: charges and their
#: status checks (the payments dependency's calls), not refunds or the catalog.
PAYMENTS = re.compile(r"(POST /charges|GET /charges/[^/?\s]+)(\?\S*)?")

#: The environment a seawall replica is started with.
ENV_REDIS = "SEAWALL_DEMO_REDIS"
ENV_NAMESPACE = "SEAWALL_DEMO_NAMESPACE"

#: The replicas' wait on Redis: 50 ms rather than the library's 10, a budget
#: that a demo machine busy with four shops and their traffic can keep.
BUDGET = 0.05


class ReplicasError(Exception):
    """A failure to set the replicas up, with a message for the terminal."""


# -- Redis ----------------------------------------------------------------------------------


def find_redis_server() -> str | None:
    return shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a Redis answers ``PING`` on host:port (no password: a plain probe)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class EmbeddedRedis:
    """``redis-server --port <free> --save '' --appendonly no`` in a temp dir, on loopback."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = _free_port()
        self.workdir = tempfile.TemporaryDirectory(prefix="seawall-demo-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.workdir.name,
            "--loglevel", "warning",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not _ping("127.0.0.1", self.port):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.stop()
                raise ReplicasError(f"redis-server exited: {err.strip()[-300:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise ReplicasError(f"redis-server did not answer within {timeout:g} s")
            time.sleep(0.01)  # its start-up, a few milliseconds
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        self.workdir.cleanup()


def redis_for(url: str | None) -> tuple[str, EmbeddedRedis | None]:
    """The replicas' Redis: *url* if given and answering, else an embedded redis-server.

    Returns (url, the embedded server to stop, or None). Raises
    :class:`ReplicasError` saying what to do when there is neither.
    """
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ReplicasError(f"--redis must be a redis:// URL, got {url!r}")
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        if not _ping(host, port):
            raise ReplicasError(f"no Redis answers at {host}:{port} (--redis)")
        return url, None
    binary = find_redis_server()
    if binary is None:
        raise ReplicasError(
            "--replicas needs Redis: pass --redis redis://HOST:6379/0, or install "
            "redis-server (e.g. apt install redis-server) so the demo can start one"
        )
    server = EmbeddedRedis(binary).start()
    return server.url, server


# -- the seawall replicas' registry ---------------------------------------------------------


def replica_env(redis_url: str, namespace: str) -> dict[str, str]:
    """The environment that makes a seawall shop one replica of a fleet."""
    return {ENV_REDIS: redis_url, ENV_NAMESPACE: namespace}


def new_namespace() -> str:
    """A namespace of its own for each run (a given Redis may hold an earlier run's)."""
    return f"seawall-demo-{uuid.uuid4().hex[:8]}"


def shared_registry(
    registry: seawall.Registry,
    state: Any,
    shared: dict[str, seawall.Shared] | None = None,
) -> seawall.Registry:
    """*registry*'s dependencies again, in a registry on *state*, with the shared parts.

    Every local setting is kept; each dependency named in *shared*
    (:data:`SHARED` by default) gets that ``Shared`` in its policy.
    """
    shared = SHARED if shared is None else shared
    fleet = seawall.Registry(clock=registry.clock, state=state)
    for name in registry.names:
        spec = registry.spec(name)
        policy = spec.policy
        if name in shared:
            policy = dataclasses.replace(policy, shared=shared[name])
        fleet.add(
            name,
            base_url=spec.base_url,
            endpoints=spec.endpoints or None,
            policy=policy,
            **dict(spec.httpx_options),
        )
    return fleet


def from_env(registry: seawall.Registry) -> seawall.Registry:
    """*registry* as one replica of a fleet when started with :func:`replica_env`'s
    environment; *registry* itself otherwise."""
    url = os.environ.get(ENV_REDIS)
    if not url:
        return registry
    from seawall.redis import RedisState

    namespace = os.environ.get(ENV_NAMESPACE) or "seawall-demo"
    return shared_registry(registry, RedisState(url=url, namespace=namespace, budget=BUDGET))


# -- the traffic ----------------------------------------------------------------------------


class RoundRobin:
    """Base URLs taken in turn: each request goes to the next replica."""

    def __init__(self, urls: Sequence[str]) -> None:
        if not urls:
            raise ValueError("RoundRobin needs at least one URL")
        self.urls = list(urls)
        self._next = 0

    def __call__(self) -> str:
        url = self.urls[self._next]
        self._next = (self._next + 1) % len(self.urls)
        return url


# -- the meter: records ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One payments request as the meter saw it pass (``time.monotonic()`` seconds)."""

    replica: int
    """Which replica sent it (0-based: the listener it came through)."""
    start: float
    """Its first byte reached the meter."""
    end: float | None
    """The answer's first byte came back, or the client closed without one (None: in flight)."""
    status: str
    """The answer's status code, ``"closed"`` (no answer), or ``""`` (in flight)."""


def peak_concurrency(records: Iterable[Record], since: float = -1e18, until: float = 1e18) -> int:
    """The most requests in flight at once between *since* and *until*."""
    events: list[tuple[float, int]] = []
    for r in records:
        end = until if r.end is None else r.end
        if end < since or r.start > until:
            continue
        events.append((max(r.start, since), 1))
        events.append((end, -1))
    # At equal times an end comes before a start: a request answered as another
    # arrives did not overlap it.
    events.sort()
    peak = level = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


@dataclass(frozen=True, slots=True)
class Opening:
    """A replica's payments breaker seen open: when (monotonic) and why."""

    replica: int
    at: float
    cause: str | None
    """``"local"`` (its own calls) or ``"shared"`` (it followed the verdict)."""


def followed(
    openings: Sequence[Opening], records: Sequence[Record], since: float, replicas: int = 2
) -> dict[str, Any] | None:
    """The summary's "second replica" figures for the breakers' first openings after *since*.

    The first replica to open opened on its own evidence; the second (the next
    one to open, or else another replica, which never opened) followed it
    (``cause`` ``"shared"``), opened on its own calls (``"local"``), or stayed
    closed (``None``: its own calls were healthy enough, and local evidence
    wins). Counts the second replica's payments requests that reached the
    provider from *since* (the provider's trouble began) to its opening (or
    to the end, if it never opened), and from the first one's opening on.
    None when no replica opened.
    """
    first_of: dict[int, Opening] = {}
    for o in sorted(openings, key=lambda o: o.at):
        if o.at >= since and o.replica not in first_of:
            first_of[o.replica] = o
    if not first_of:
        return None
    in_order = sorted(first_of.values(), key=lambda o: o.at)
    first = in_order[0]
    if len(in_order) > 1:
        second: Opening | None = in_order[1]
        replica = in_order[1].replica
    else:
        second = None
        replica = next(i for i in range(replicas) if i != first.replica)
    until = math.inf if second is None else second.at
    sent = [r.start for r in records if r.replica == replica]
    return {
        "first": {"replica": first.replica + 1, "cause": first.cause},
        "second": {
            "replica": replica + 1,
            "cause": None if second is None else second.cause,
            "opened_after_first_s": None if second is None else round(second.at - first.at, 3),
            "calls_before_open": sum(1 for t in sent if since <= t < until),
            "calls_after_first_opened": sum(1 for t in sent if first.at <= t < until),
        },
    }


# -- the meter: the proxy -------------------------------------------------------------------


class Meter:
    """A proxy from N listening ports (one per replica) to one upstream, recording
    the requests whose ``METHOD PATH`` matches *match*.

    A request starts with its first byte and ends with the first byte of the
    answer (or the connection closing without one): the time the provider
    holds it. HTTP/1.1 without pipelining, which is what httpx sends.
    """

    def __init__(self, upstream: str, replicas: int, match: re.Pattern[str] = PAYMENTS) -> None:
        parts = urlsplit(upstream)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.replicas = replicas
        self.match = match
        self.records: list[Record] = []
        self._open: dict[int, tuple[int, float]] = {}  # id -> (replica, start)
        self._ids = iter(range(1 << 62))
        self.peak = 0
        self.lock = threading.Lock()

    def stats(self) -> dict[str, Any]:
        """Every record so far (in-flight ones with no end), and the peak seen live."""
        with self.lock:
            done = [dataclasses.astuple(r) for r in self.records]
            now = [(replica, start, None, "") for replica, start in self._open.values()]
            return {"peak": self.peak, "records": done + now}

    def _begin(self, replica: int, head: bytes) -> int | None:
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, _, rest = line.partition(" ")
        target = rest.rsplit(" ", 1)[0]
        if not self.match.fullmatch(f"{method} {target}"):
            return None
        with self.lock:
            key = next(self._ids)
            self._open[key] = (replica, time.monotonic())
            self.peak = max(self.peak, len(self._open))
        return key

    def _end(self, key: int, status: str) -> None:
        with self.lock:
            replica, start = self._open.pop(key)
            self.records.append(Record(replica, start, time.monotonic(), status))

    async def serve(self, ready: Any) -> None:
        servers = []
        for replica in range(self.replicas):

            async def handle(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter, replica: int = replica
            ) -> None:
                await self._connection(replica, reader, writer)

            servers.append(await asyncio.start_server(handle, "127.0.0.1", 0))
        ready([s.sockets[0].getsockname()[1] for s in servers])
        await asyncio.gather(*(s.serve_forever() for s in servers))

    async def _connection(
        self, replica: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        busy: list[int | bool | None] = [False]  # False idle; None unmatched; int: a record
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return

        async def requests() -> None:
            while data := await reader.read(65536):
                if busy[0] is False:
                    busy[0] = self._begin(replica, data)
                up_writer.write(data)
                await up_writer.drain()

        async def answers() -> None:
            while data := await up_reader.read(65536):
                key = busy[0]
                if key is not False:
                    busy[0] = False
                    if key is not None:
                        self._end(key, data[9:12].decode("latin-1"))
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(requests()), asyncio.ensure_future(answers())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*tasks, return_exceptions=True)
            key = busy[0]
            if key is not False and key is not None:
                self._end(key, "closed")
            for w in (writer, up_writer):
                w.close()


def _meter_main(argv: list[str]) -> None:
    """``meter UPSTREAM N``: print ``READY port1 ... portN``; then, for each ``stats``
    line on stdin, one line of JSON (:meth:`Meter.stats`). Stops at end of input."""
    meter = Meter(argv[0], int(argv[1]))
    ports: list[int] = []
    ready = threading.Event()

    def run() -> None:
        def started(p: list[int]) -> None:
            ports.extend(p)
            ready.set()

        with contextlib.suppress(Exception):
            asyncio.run(meter.serve(started))
        ready.set()

    threading.Thread(target=run, daemon=True, name="meter").start()
    ready.wait(10)
    if not ports:
        print("ERROR the meter could not listen", flush=True)
        sys.exit(2)
    print("READY " + " ".join(map(str, ports)), flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            print(json.dumps(meter.stats()), flush=True)


class MeterChild:
    """The meter in a child process of its own (its work never competes with the
    traffic generator's for the GIL): ``urls`` are its ports, one per replica."""

    def __init__(self, upstream: str, replicas: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "seawall._demo.replicas", "meter", upstream, str(replicas)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        words = self.proc.stdout.readline().split()
        if not words or words[0] != "READY" or len(words) != replicas + 1:
            self.stop()
            raise ReplicasError(f"the meter did not start: {' '.join(words)!r}")
        self.urls = [f"http://127.0.0.1:{port}" for port in words[1:]]
        self._lock = threading.Lock()

    def stats(self) -> dict[str, Any]:
        """The meter's records and live peak (blocking; one question at a time)."""
        with self._lock:
            assert self.proc.stdin is not None
            assert self.proc.stdout is not None
            self.proc.stdin.write("stats\n")
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def records_of(stats: dict[str, Any]) -> list[Record]:
    """The records of a ``stats`` answer."""
    return [
        Record(int(r), float(s), None if e is None else float(e), str(st))
        for r, s, e, st in stats["records"]
    ]


# -- the runner's side -----------------------------------------------------------------------


def merge_stats(stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ``/_stats`` of a variant's replicas as one shop's.

    Per dependency, the counts (outcomes, retries, fallbacks, calls in flight,
    bulkhead limits) are summed, and the breaker reads each replica's state
    where they differ (``"open/closed"``). The seawall shop's verification
    counts are summed too; the rest (orders, the outbox: one database that
    every replica of a shop shares) is the first replica's.
    """
    found = [s for s in stats if s]
    if not found:
        return {}
    merged = dict(found[0])
    deps: dict[str, dict[str, Any]] = {}
    for one in found:
        for name, figures in one.get("dependencies", {}).items():
            into = deps.setdefault(name, {})
            for key, value in figures.items():
                if key == "outcomes":
                    outcomes = into.setdefault(key, {})
                    for outcome, n in value.items():
                        outcomes[outcome] = outcomes.get(outcome, 0) + n
                elif key == "breaker":
                    states = into.setdefault("_breakers", [])
                    states.append(value)
                elif isinstance(value, int | float) and not isinstance(value, bool):
                    if key.endswith("_ms"):  # a latency estimate: the lowest
                        into[key] = value if into.get(key) is None else min(into[key], value)
                    else:
                        into[key] = into.get(key, 0) + value
                else:
                    into.setdefault(key, value)
    for figures in deps.values():
        states = figures.pop("_breakers", [])
        if states:
            figures["breaker"] = states[0] if len(set(states)) == 1 else "/".join(map(str, states))
    merged["dependencies"] = deps
    if "verified" in merged:
        verified: dict[str, int] = {}
        for one in found:
            for key, n in one.get("verified", {}).items():
                verified[key] = verified.get(key, 0) + n
        merged["verified"] = verified
    return merged


def failing_since(
    phases: Sequence[tuple[str, float, float]], faults: Sequence[str]
) -> float | None:
    """When the provider's trouble began: the start of the first phase whose fault is
    not ``ok`` (*phases* as the runner keeps them, *faults* each phase's)."""
    for (_, start, _), fault in zip(phases, faults, strict=False):
        if fault != "ok":
            return start
    return None


class Fleet:
    """The replicas' side of a ``--replicas`` run.

    :meth:`start_redis` before the apps; :meth:`meter` for each variant's
    provider (the replicas call it through the meter's ports);
    :meth:`watch` alongside the traffic; :meth:`summary` at the end.
    """

    def __init__(self, replicas: int, redis_url: str | None = None) -> None:
        if replicas < 2:
            raise ReplicasError(f"--replicas must be at least 2, got {replicas}")
        self.replicas = replicas
        self.given_url = redis_url
        self.redis_url = ""
        self.namespace = new_namespace()
        self._embedded: EmbeddedRedis | None = None
        self.meters: dict[str, MeterChild] = {}
        self.openings: list[Opening] = []
        self._seen: dict[int, str] = {}
        #: Each seawall replica's decisions taken without Redis (its last snapshot's).
        self._local: dict[int, dict[str, int]] = {}

    def start_redis(self) -> str:
        self.redis_url, self._embedded = redis_for(self.given_url)
        return self.redis_url

    @property
    def redis(self) -> str:
        """``"embedded"`` or ``"given"``."""
        return "embedded" if self.given_url is None else "given"

    def env(self) -> dict[str, str]:
        """The environment of a seawall replica."""
        return replica_env(self.redis_url, self.namespace)

    def meter(self, variant: str, upstream: str) -> list[str]:
        """Start the meter in front of *variant*'s provider; the URL each replica calls."""
        child = self.meters[variant] = MeterChild(upstream, self.replicas)
        return child.urls

    def stop(self) -> None:
        for child in self.meters.values():
            child.stop()
        self.meters.clear()
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None

    async def watch(
        self, client: httpx.AsyncClient, urls: Sequence[str], end: float, every: float = 0.1
    ) -> None:
        """Poll the seawall replicas' snapshots until *end*, noting when each one's
        payments breaker opens and why (``cause``: its own calls, or the verdict)."""
        while time.monotonic() < end:
            for i, url in enumerate(urls):
                try:
                    response = await client.get(url + "/_resilience/", timeout=2.0)
                    snapshot = response.json()
                    payments = snapshot["dependencies"]["payments"]
                    self._local[i] = dict(snapshot["state"]["local_decisions"])
                except (httpx.HTTPError, ValueError, KeyError, TypeError):
                    continue  # a replica busy or starting: the next poll
                state = (payments.get("breaker") or {}).get("state")
                if state == "open" and self._seen.get(i) != "open":
                    cause = (payments.get("shared") or {}).get("cause")
                    self.openings.append(Opening(i, time.monotonic(), cause))
                if state is not None:
                    self._seen[i] = state
            await anyio.sleep(every)

    def summary(self, started: float, since: float | None) -> dict[str, Any]:
        """The summary's ``"replicas"`` entry (blocking: asks the meters).

        *started* is the run's start (monotonic), *since* when the provider's
        trouble began, in seconds from *started* (None: it never did).
        """
        peaks: dict[str, int] = {}
        calls: dict[str, list[int]] = {}
        follow = None
        for variant, child in self.meters.items():
            records = records_of(child.stats())
            peaks[variant] = peak_concurrency(records, since=started)
            calls[variant] = [
                sum(1 for r in records if r.replica == i and r.start >= started)
                for i in range(self.replicas)
            ]
            if variant == "seawall" and since is not None:
                follow = followed(self.openings, records, started + since, self.replicas)
        return {
            "count": self.replicas,
            "redis": self.redis,
            "global_cap": GLOBAL_CAP,
            "provider_peak_concurrency": peaks,
            "payments_requests_by_replica": calls,
            "breaker_followed": follow,
            # Calls the seawall replicas admitted on local state (Redis slower than
            # budget, or down): the cap may be exceeded by up to these.
            "local_decisions": {
                feature: sum(d.get(feature, 0) for d in self._local.values())
                for feature in sorted({f for d in self._local.values() for f in d})
            },
        }


if __name__ == "__main__":
    if sys.argv[1:2] == ["meter"]:
        _meter_main(sys.argv[2:])
    else:
        print("usage: python -m seawall._demo.replicas meter UPSTREAM N", file=sys.stderr)
        sys.exit(2)
