"""What ResilientClient adds per HTTP call over plain httpx, next to a peer stack, in one run.

    python bench/client.py                   # full run (about 2 minutes)
    python bench/client.py --quick           # smoke run (< 60 s)
    python bench/client.py --rounds 21 --calls 2000
    python bench/client.py --profile sdk     # cProfile one case on the mock transport

Sections:

1. ``httpx.MockTransport``, sequential: pure client-side overhead. Raw
   ``httpx.AsyncClient``; ``seawall.ResilientClient`` with a full policy
   (connect/read/write/pool, attempt and total timeouts; retry with a budget;
   bulkhead; breaker; stale-if-error fallback cache) under three telemetry
   settings (``telemetry.disable()``; enabled with no OpenTelemetry SDK, the
   default; an SDK tracer and meter provider); and a hand-assembled peer
   stack: ``asyncio.timeout`` > tenacity ``AsyncRetrying`` > aiobreaker >
   ``anyio.CapacityLimiter`` > ``asyncio.timeout`` around raw httpx. Also
   seawall with a policy without the fallback cache (the peer's feature set),
   and raw and seawall over 1000 distinct URLs in turn (a full cache).
2. The telemetry hooks alone (``start_call`` and ``log_call``, what the
   transport runs per call when no SDK is configured), to resolve the
   "no SDK costs under 3 us" aim more finely than a whole call can.
3. A uvicorn server on loopback (a child process; the listening socket made
   with ``IPPROTO_TCP`` so accepted connections get ``TCP_NODELAY``),
   sequential.
4. The same server, 64 concurrent tasks sharing pools of 16 connections
   (see POOL_SIZE): per-call time is wall time over calls, and the p50 and
   p99 of individual call latencies are kept.

structlog is configured once, to a null sink (``ReturnLoggerFactory``) with
a filtering logger at INFO, so ``seawall.call`` (debug for successes) is
filtered the way an application's default setup filters it. The telemetry
settings are process-wide, so each case sets its own before each batch.

Every case runs once per round, rounds shuffle the order, and figures are
medians over rounds; differences and ratios against the raw httpx row are
taken within each round and their median reported. On these 2-core machines,
whose speed changes within seconds, compare those, not absolute times from
different runs. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import aiobreaker
import anyio
import httpx
import structlog
import tenacity
from _common import Case, Result, contention, machine_summary, measure, quantile, versions
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import seawall
import seawall.telemetry
from seawall.telemetry import _otel

# -- the policy and the peers' equivalent ------------------------------------------

# Every client's pool: fewer connections than the 64 concurrent tasks, so that
# each pool fills to exactly this size and stays there (kept alive, no expiry
# between batches). With a pool larger than the concurrency, how many
# connections a pool ends up with varies from run to run (13 to 64 seen), and
# httpcore's pool bookkeeping, whose cost per request grows with connections x
# queued requests, then decided the comparison. The raw and peer clients get
# the same limits.
POOL_SIZE = 16

POLICY = seawall.Policy(
    timeouts=seawall.Timeouts(
        connect=5.0, read=10.0, write=10.0, pool=5.0, attempt=10.0, total=30.0
    ),
    retry=seawall.Retry(attempts=3, budget=seawall.RetryBudget()),
    bulkhead=seawall.Bulkhead(max_concurrent=100, max_wait=0.0),
    breaker=seawall.CircuitBreaker(),
    fallback=seawall.Fallback(stale_if_error=60.0),
    pool=seawall.Pool(max_connections=POOL_SIZE, max_keepalive=POOL_SIZE, keepalive_expiry=300.0),
)
LIMITS = httpx.Limits(
    max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE, keepalive_expiry=300.0
)
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
NO_FALLBACK = replace(POLICY, fallback=None)  # the peer stack's feature set
CONCURRENCY = 64
# Paths called in turn by the "distinct URLs" rows: the fallback cache then
# holds this many entries (its default max_entries is 1024).
DISTINCT_URLS = 1000

PATH = "/items/42"
BODY = b'{"id":42,"name":"widget","tags":["a","b"],"price":12.5}'
JSON_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]

G_MOCK = "1. httpx.MockTransport, sequential"
G_HOOKS = "2. telemetry hooks alone (start_call + log_call per call), no SDK"
G_SEQ = "3. uvicorn on loopback, sequential"
G_CONC = f"4. uvicorn on loopback, {CONCURRENCY} concurrent tasks"

RAW = "raw httpx.AsyncClient"
RAW_URLS = f"raw httpx.AsyncClient, {DISTINCT_URLS} distinct URLs in turn"
SW_OFF = "seawall ResilientClient, telemetry.disable()"
SW = "seawall ResilientClient, telemetry on, no OTel SDK (default)"
SW_SDK = "seawall ResilientClient, OTel SDK: spans + metrics"
SW_NOFB = "seawall ResilientClient, no SDK, policy without fallback cache"
SW_URLS = f"seawall ResilientClient, no SDK, {DISTINCT_URLS} distinct URLs in turn"
PEER = "peer: asyncio.timeout+tenacity+aiobreaker+CapacityLimiter+asyncio.timeout"

H_OFF = "2: hooks, telemetry.disable()"
H_NOSDK = "2: hooks, no SDK, success_log_level='debug' (default)"
H_NOLOG = "2: hooks, no SDK, success_log_level='off'"


# -- telemetry settings, switched per case ----------------------------------------------


class NoopExporter(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


@dataclass
class Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    @classmethod
    def build(cls) -> Telemetry:
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(BatchSpanProcessor(NoopExporter()))
        meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        return cls(tracer_provider, meter_provider)

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


TELEMETRY: Telemetry | None = None


def set_telemetry(mode: str) -> None:
    """Process-wide seawall telemetry settings: off, nosdk, nolog or sdk."""
    # Every field, so that no case inherits another's setting.
    base: dict[str, Any] = {
        "enabled": True,
        "tracer_provider": None,
        "meter_provider": None,
        "success_log_level": "debug",
        "failure_log_level": "info",
        "attempt_spans": "auto",
    }
    if mode == "off":
        base["enabled"] = False
    elif mode == "nolog":
        base["success_log_level"] = "off"
    elif mode == "sdk":
        assert TELEMETRY is not None
        base["tracer_provider"] = TELEMETRY.tracer_provider
        base["meter_provider"] = TELEMETRY.meter_provider
    else:
        assert mode == "nosdk", mode
    seawall.telemetry.configure(**base)


def configure_structlog() -> None:
    # A null sink at the usual default level: seawall.call for successes (debug)
    # is filtered, failures (info) would go to a logger that returns its input.
    structlog.configure(
        logger_factory=structlog.ReturnLoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )


# -- the peer stack ------------------------------------------------------------------


class RetryableStatus(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def peer_stack(client: httpx.AsyncClient) -> Callable[[], Awaitable[httpx.Response]]:
    """The same protection, assembled by hand: what an app writes without seawall.

    Total timeout > retry (tenacity, a fresh AsyncRetrying per call, as its docs
    show) > breaker (aiobreaker) > bulkhead (anyio.CapacityLimiter) > attempt
    timeout. No fallback cache and no retry budget: neither has a common peer.
    """
    breaker = aiobreaker.CircuitBreaker(fail_max=20, timeout_duration=timedelta(seconds=30))
    limiter = anyio.CapacityLimiter(100)
    retry_on = tenacity.retry_if_exception_type(
        (httpx.TransportError, TimeoutError, RetryableStatus)
    )
    stop = tenacity.stop_after_attempt(3)
    wait = tenacity.wait_random_exponential(multiplier=0.1, max=10)

    async def attempt() -> httpx.Response:
        async with limiter:
            async with asyncio.timeout(10.0):
                response = await client.get(PATH)
        if response.status_code in RETRY_STATUSES:
            raise RetryableStatus(response)
        return response

    async def get() -> httpx.Response:
        async with asyncio.timeout(30.0):
            async for tries in tenacity.AsyncRetrying(
                stop=stop, wait=wait, retry=retry_on, reraise=True
            ):
                with tries:
                    return await breaker.call_async(attempt)
        raise AssertionError("unreachable")

    return get


# -- loops and per-case extras ---------------------------------------------------------


@dataclass
class Extra:
    #: Process CPU microseconds per call (the OTel SDK's export thread included).
    proc_us: list[float] = field(default_factory=list)
    #: Per round: p50 and p99 of individual call latencies, microseconds.
    p50_us: list[float] = field(default_factory=list)
    p99_us: list[float] = field(default_factory=list)


EXTRAS: dict[str, Extra] = {}


def sequential(name: str, get: Callable[[], Awaitable[httpx.Response]]) -> Callable[[int], Any]:
    extra = EXTRAS.setdefault(name, Extra())

    async def run(n: int) -> int:
        bad = 0
        p0 = time.process_time_ns()
        for _ in range(n):
            response = await get()
            if response.status_code != 200 or response.content != BODY:
                bad += 1
        extra.proc_us.append((time.process_time_ns() - p0) / n / 1000)
        return bad

    return run


def concurrent(name: str, get: Callable[[], Awaitable[httpx.Response]]) -> Callable[[int], Any]:
    extra = EXTRAS.setdefault(name, Extra())

    async def run(n: int) -> int:
        latencies: list[int] = []
        bad = 0

        async def worker(k: int) -> None:
            nonlocal bad
            clock = time.perf_counter_ns
            for _ in range(k):
                t0 = clock()
                response = await get()
                latencies.append(clock() - t0)
                if response.status_code != 200 or response.content != BODY:
                    bad += 1

        p0 = time.process_time_ns()
        async with anyio.create_task_group() as tg:
            for i in range(CONCURRENCY):
                k = n // CONCURRENCY + (1 if i < n % CONCURRENCY else 0)
                if k:
                    tg.start_soon(worker, k)
        extra.proc_us.append((time.process_time_ns() - p0) / n / 1000)
        extra.p50_us.append(quantile(latencies, 0.5) / 1000)
        extra.p99_us.append(quantile(latencies, 0.99) / 1000)
        return bad

    return run


def telemetry_before(mode: str, warm: Callable[[], Awaitable[Any]]) -> Callable[[], Any]:
    async def before() -> None:
        set_telemetry(mode)
        await warm()  # untimed: builds the tracer and instruments for this setting

    return before


# -- clients ---------------------------------------------------------------------------


def mock_handler(request: httpx.Request) -> httpx.Response:
    # An unread stream, as every network transport returns: with ``content=``
    # raw httpx would skip its body-reading path altogether.
    return httpx.Response(200, headers=JSON_HEADERS, stream=httpx.ByteStream(BODY))


class Clients:
    """The clients of one mode, each with its own pool (and, for seawall, runtime)."""

    def __init__(
        self,
        base_url: str,
        transport: Callable[[], httpx.AsyncBaseTransport | None],
        *,
        extra: bool = False,
    ) -> None:
        def raw_client() -> httpx.AsyncClient:
            t = transport()
            if t is None:
                return httpx.AsyncClient(base_url=base_url, limits=LIMITS)
            return httpx.AsyncClient(base_url=base_url, transport=t)

        def resilient(name: str, policy: seawall.Policy) -> seawall.ResilientClient:
            # One runtime per client (its own breaker, bulkhead, cache), as a
            # standalone ResilientClient has.
            return seawall.ResilientClient(
                name, policy=policy, base_url=base_url, transport=transport()
            )

        self.raw = raw_client()
        self.peer_client = raw_client()
        self.peer = peer_stack(self.peer_client)
        self.seawall = resilient("upstream", POLICY)
        self.all: list[httpx.AsyncClient] = [self.raw, self.peer_client, self.seawall]
        if extra:
            self.seawall_nofallback = resilient("upstream-nofb", NO_FALLBACK)
            self.seawall_urls = resilient("upstream-urls", POLICY)
            self.all += [self.seawall_nofallback, self.seawall_urls]

    async def aclose(self) -> None:
        for c in self.all:
            await c.aclose()


def cycling(client: httpx.AsyncClient) -> Callable[[], Awaitable[httpx.Response]]:
    """GET over DISTINCT_URLS different paths in turn (a full fallback cache for seawall)."""
    paths = itertools.cycle([f"/items/{i}" for i in range(DISTINCT_URLS)])
    return lambda: client.get(next(paths))


Loop = Callable[[str, Callable[[], Awaitable[httpx.Response]]], Callable[[int], Any]]


def client_cases(group: str, clients: Clients, loop: Loop, *, mock: bool) -> list[Case]:
    """raw, seawall (telemetry off/no SDK/SDK), the peer; on the mock transport a few more."""
    tag = group.split(".")[0]

    def case(name: str, mode: str, get: Callable[[], Awaitable[Any]], ref: str | None) -> Case:
        key = f"{tag}: {name}"
        return Case(
            key,
            group,
            loop(key, get),
            ref=None if ref is None else f"{tag}: {ref}",
            before=telemetry_before(mode, get),
        )

    sw_get = lambda: clients.seawall.get(PATH)  # noqa: E731
    raw_get = lambda: clients.raw.get(PATH)  # noqa: E731
    cases = [case(RAW, "nosdk", raw_get, None)]
    if mock:
        cases.append(case(SW_OFF, "off", sw_get, RAW))
    cases += [case(SW, "nosdk", sw_get, RAW), case(SW_SDK, "sdk", sw_get, RAW)]
    if mock:
        nofb = clients.seawall_nofallback
        cases.append(case(SW_NOFB, "nosdk", lambda: nofb.get(PATH), RAW))
    cases.append(case(PEER, "nosdk", clients.peer, RAW))
    if mock:
        cases += [
            case(RAW_URLS, "nosdk", cycling(clients.raw), None),
            case(SW_URLS, "nosdk", cycling(clients.seawall_urls), RAW_URLS),
        ]
    return cases


async def hook_cases(clients: Clients) -> list[Case]:
    """start_call + log_call, exactly as ResilientTransport runs them per call."""
    set_telemetry("nosdk")
    response = await clients.seawall.get(PATH)
    report = response.extensions["seawall"]
    url = response.request.url
    inner = clients.seawall.resilient_transport.inner
    start_call, log_call = _otel.start_call, _otel.log_call

    def loop(name: str) -> Callable[[int], Any]:
        extra = EXTRAS.setdefault(name, Extra())

        async def run(n: int) -> int:
            p0 = time.process_time_ns()
            for _ in range(n):
                tel = start_call("upstream", "GET", inner)
                if tel is not None:
                    raise AssertionError("an SDK is configured")
                log_call(report, url)
            extra.proc_us.append((time.process_time_ns() - p0) / n / 1000)
            return 0

        return run

    async def noop() -> None:
        return None

    out = []
    for name, mode in [(H_OFF, "off"), (H_NOSDK, "nosdk"), (H_NOLOG, "nolog")]:
        out.append(
            Case(
                name,
                G_HOOKS,
                loop(name),
                ref=None if mode == "off" else H_OFF,
                before=telemetry_before(mode, noop),
            )
        )
    return out


# -- the loopback server ---------------------------------------------------------------


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def serve() -> None:
    """Child process: uvicorn on 127.0.0.1, on a socket made with IPPROTO_TCP."""
    import uvicorn

    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose
    # proto says TCP, and accepted sockets inherit it (see shared PERF-NOTES).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    config = uvicorn.Config(
        asgi_app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=600,
        backlog=2048,
    )
    server = uvicorn.Server(config)
    print(sock.getsockname()[1], flush=True)
    server.run(sockets=[sock])


class Server:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip():
            self.proc.kill()
            raise RuntimeError("the uvicorn child did not start")
        self.url = f"http://127.0.0.1:{int(line)}"

    async def wait_ready(self) -> None:
        async with httpx.AsyncClient(base_url=self.url) as c:
            for _ in range(100):
                try:
                    r = await c.get(PATH)
                except httpx.TransportError:
                    await anyio.sleep(0.05)
                    continue
                if r.content == BODY:
                    return
            raise RuntimeError("the uvicorn child does not answer")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- summaries and tables ----------------------------------------------------------------


def med_diff(a: list[float], b: list[float]) -> float:
    return statistics.median(x - y for x, y in zip(a, b, strict=True))


def med_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def extra_of(name: str) -> Extra:
    """The case's extras without the warm-up batch (measure() runs it first)."""
    e = EXTRAS[name]
    return Extra(e.proc_us[1:], e.p50_us[1:], e.p99_us[1:])


def print_group(results: dict[str, Result], group: str, *, latencies: bool = False) -> None:
    """One section; '+us' and 'x' compare each row with its case's ``ref`` (a raw row)."""
    rows = [r for r in results.values() if r.case.group == group]
    print()
    print(group)
    if latencies:
        header = (
            f"{'case':<76} {'wall/call':>9} {'+us':>7} {'x raw':>6} {'p50':>8} {'x raw':>6} "
            f"{'p99':>8} {'CPU':>7} {'+us':>7} {'x raw':>6} {'proc':>7}"
        )
    else:
        header = (
            f"{'case':<76} {'CPU':>7} {'p25-p75':>13} {'+us':>7} {'x raw':>6} "
            f"{'wall':>8} {'+us':>7} {'x raw':>6} {'proc':>7}"
        )
    print(header)
    print("-" * len(header))
    for r in rows:
        x = extra_of(r.case.name)
        name = r.case.name.split(": ", 1)[1]
        cpu, wall = r.median, statistics.median(r.wall_us)
        d_cpu = x_cpu = d_wall = x_wall = x_p50 = ""
        if r.case.ref is not None:
            base = results[r.case.ref]
            d_cpu = f"{med_diff(r.per_call_us, base.per_call_us):+7.1f}"
            x_cpu = f"{med_ratio(r.per_call_us, base.per_call_us):6.2f}"
            d_wall = f"{med_diff(r.wall_us, base.wall_us):+7.1f}"
            x_wall = f"{med_ratio(r.wall_us, base.wall_us):6.3f}"
            if latencies:
                x_p50 = f"{med_ratio(x.p50_us, extra_of(r.case.ref).p50_us):6.3f}"
        proc = statistics.median(x.proc_us)
        if latencies:
            p50 = statistics.median(x.p50_us)
            p99 = statistics.median(x.p99_us)
            print(
                f"{name:<76} {wall:>9.1f} {d_wall:>7} {x_wall:>6} {p50:>8.0f} {x_p50:>6} "
                f"{p99:>8.0f} {cpu:>7.1f} {d_cpu:>7} {x_cpu:>6} {proc:>7.1f}"
            )
        else:
            spread = f"{r.p25:.1f}-{r.p75:.1f}"
            print(
                f"{name:<76} {cpu:>7.1f} {spread:>13} {d_cpu:>7} {x_cpu:>6} "
                f"{wall:>8.1f} {d_wall:>7} {x_wall:>6} {proc:>7.1f}"
            )


# -- aims ----------------------------------------------------------------------------------


def aim(ok: bool, text: str) -> None:
    print(f"  [{'ok  ' if ok else 'MISS'}] {text}")


def print_aims(res: dict[str, Result], loopback: bool) -> None:
    print()
    print("aims (per-round differences and ratios, medians over rounds)")

    def k(group: str, name: str) -> str:
        return f"{group.split('.')[0]}: {name}"

    raw, sw, sdk, off, peer, nofb = (
        res[k(G_MOCK, n)] for n in (RAW, SW, SW_SDK, SW_OFF, PEER, SW_NOFB)
    )
    d = med_diff(sw.per_call_us, raw.per_call_us)
    aim(d < 30, f"mock: ResilientClient adds {d:.1f} us CPU per call over raw (aim < 30 us)")
    x = med_ratio(peer.per_call_us, sw.per_call_us)
    x2 = med_ratio(peer.per_call_us, nofb.per_call_us)
    aim(
        x > 1,
        f"mock: the peer stack takes {x:.2f}x ResilientClient's CPU time (aim > 1); "
        f"{x2:.2f}x that of a policy without the fallback cache",
    )
    d = med_diff(sdk.per_call_us, sw.per_call_us)
    dp = med_diff(extra_of(sdk.case.name).proc_us, extra_of(sw.case.name).proc_us)
    aim(
        max(d, dp) < 60,
        f"mock: OTel SDK telemetry adds {d:.1f} us thread CPU ({dp:.1f} us process CPU, "
        "export thread included) per call over no SDK (aim < 60 us)",
    )
    d = med_diff(sw.per_call_us, off.per_call_us)
    h = med_diff(res[H_NOSDK].per_call_us, res[H_OFF].per_call_us)
    aim(
        max(d, h) < 3,
        f"no SDK vs telemetry.disable(): {d:+.1f} us per whole call, {h:+.2f} us in the "
        "hooks alone (aim < 3 us)",
    )
    if not loopback:
        return
    for group, latencies in ((G_SEQ, False), (G_CONC, True)):
        raw, sw, sdk, peer = (res[k(group, n)] for n in (RAW, SW, SW_SDK, PEER))
        label = "sequential" if not latencies else f"{CONCURRENCY} tasks"
        x = med_ratio(sw.wall_us, raw.wall_us)
        ratios = [a / b for a, b in zip(sw.wall_us, raw.wall_us, strict=True)]
        aim(
            x <= 1.05,
            f"loopback, {label}: ResilientClient {x:.3f}x raw, wall per call (aim <= 1.05; "
            f"per-round ratios p25-p75 {quantile(ratios, 0.25):.2f}-{quantile(ratios, 0.75):.2f})",
        )
        if latencies:
            x = med_ratio(extra_of(sw.case.name).p50_us, extra_of(raw.case.name).p50_us)
            aim(
                x <= 1.05,
                f"loopback, {label}: ResilientClient p50 latency {x:.3f}x raw (aim <= 1.05)",
            )
        x = med_ratio(peer.wall_us, sw.wall_us)
        aim(
            x > 1,
            f"loopback, {label}: the peer stack takes {x:.3f}x ResilientClient's wall time "
            "(aim > 1)",
        )
        d = med_diff(sdk.per_call_us, sw.per_call_us)
        dp = med_diff(extra_of(sdk.case.name).proc_us, extra_of(sw.case.name).proc_us)
        aim(
            max(d, dp) < 60,
            f"loopback, {label}: OTel SDK telemetry adds {d:.1f} us thread CPU ({dp:.1f} us "
            "process CPU) per call over no SDK (aim < 60 us)",
        )


# -- profile -------------------------------------------------------------------------------

PROFILE_CASES = {"raw": "nosdk", "nosdk": "nosdk", "off": "off", "sdk": "sdk", "peer": "nosdk"}


async def profile(which: str, n: int) -> None:
    """cProfile one case on the mock transport (function-level; cProfile inflates small calls)."""
    import cProfile
    import pstats

    clients = Clients("http://upstream.test", lambda: httpx.MockTransport(mock_handler))
    get = {
        "raw": lambda: clients.raw.get(PATH),
        "peer": clients.peer,
    }.get(which, lambda: clients.seawall.get(PATH))
    set_telemetry(PROFILE_CASES[which])
    run = sequential(which, get)
    await run(1000)
    prof = cProfile.Profile()
    prof.enable()
    await run(n)
    prof.disable()
    await clients.aclose()
    print(f"cProfile of {which!r} on httpx.MockTransport, {n:,} calls")
    stats = pstats.Stats(prof)
    print("-- by own time")
    stats.sort_stats("tottime").print_stats(30)
    print("-- seawall functions by cumulative time")
    stats.sort_stats("cumulative").print_stats(r"seawall/", 30)


# -- main -------------------------------------------------------------------------------------


async def amain(args: argparse.Namespace) -> None:
    global TELEMETRY
    TELEMETRY = Telemetry.build()
    if args.profile:
        await profile(args.profile, args.profile_calls)
        TELEMETRY.shutdown()
        return
    t0 = time.perf_counter()

    def progress(label: str, rounds: int) -> Callable[[int], None]:
        def report(r: int) -> None:
            print(
                f"  {label}: round {r + 1}/{rounds} ({time.perf_counter() - t0:.1f} s)",
                file=sys.stderr,
            )

        return report

    results: dict[str, Result] = {}
    mock = Clients("http://upstream.test", lambda: httpx.MockTransport(mock_handler), extra=True)
    results |= await measure(
        client_cases(G_MOCK, mock, sequential, mock=True),
        rounds=args.rounds,
        calls=args.calls,
        progress=progress("mock", args.rounds),
    )
    results |= await measure(
        await hook_cases(mock),
        rounds=args.rounds,
        calls=args.hook_calls,
        progress=progress("hooks", args.rounds),
    )
    await mock.aclose()

    loopback = not args.skip_loopback
    if loopback:
        server = Server()
        try:
            await server.wait_ready()
            live = Clients(server.url, lambda: None)
            for group, loop, calls in (
                (G_SEQ, sequential, args.loopback_calls),
                (G_CONC, concurrent, args.concurrent_calls),
            ):
                results |= await measure(
                    client_cases(group, live, loop, mock=False),
                    rounds=args.loopback_rounds,
                    calls=calls,
                    progress=progress(group.split(",")[-1].strip(), args.loopback_rounds),
                )
            await live.aclose()
        finally:
            server.stop()
    set_telemetry("nosdk")
    TELEMETRY.shutdown()

    print(
        f"Rounds: {args.rounds} (sections 1-2), {args.loopback_rounds} (3-4), interleaved, "
        f"cases shuffled each round. Calls per case per round: {args.calls} (1), "
        f"{args.hook_calls} (2), {args.loopback_calls} (3), {args.concurrent_calls} (4).\n"
        "Microseconds per call, medians over rounds. CPU: this thread's CPU time; wall: "
        "wall-clock time; proc: the whole process's CPU time (the OTel SDK's export thread "
        "included). '+us' and 'x raw': the row minus / over its raw row (the first of its "
        "section, or the raw row on the same URLs), taken within each round, median over "
        "rounds. p50/p99: of individual call latencies within a round, median over rounds."
    )
    for group in (G_MOCK, G_HOOKS, G_SEQ, G_CONC):
        if any(r.case.group == group for r in results.values()):
            print_group(results, group, latencies=group == G_CONC)
    print()
    for group in (G_MOCK, G_SEQ, G_CONC):
        part = {k: v for k, v in results.items() if v.case.group == group}
        if part:
            print(f"wall / CPU time, section {group.split('.')[0]}: {contention(part):.2f}")
    print("(1 in section 1: no other process had the cores; in 3-4 the server shares them)")
    print_aims(results, loopback)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=15, help="interleaved rounds of sections 1 and 2 (15)"
    )
    parser.add_argument(
        "--calls", type=int, default=1000, help="mock-transport calls per case per round (1000)"
    )
    parser.add_argument(
        "--hook-calls", type=int, default=20_000, help="telemetry-hook calls per case per round"
    )
    parser.add_argument(
        "--loopback-calls",
        type=int,
        default=400,
        help="sequential loopback calls per case per round (400)",
    )
    parser.add_argument(
        "--concurrent-calls",
        type=int,
        default=640,
        help=f"calls per case per round over {CONCURRENCY} tasks (640)",
    )
    parser.add_argument(
        "--loopback-rounds", type=int, default=15, help="rounds of sections 3 and 4 (15)"
    )
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (< 60 s)")
    parser.add_argument("--skip-loopback", action="store_true", help="sections 1 and 2 only")
    parser.add_argument(
        "--profile", choices=sorted(PROFILE_CASES), help="only cProfile one mock-transport case"
    )
    parser.add_argument("--profile-calls", type=int, default=20_000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return
    if args.quick:
        args.rounds = min(args.rounds, 5)
        args.loopback_rounds = min(args.loopback_rounds, 4)
        args.calls = min(args.calls, 200)
        args.hook_calls = min(args.hook_calls, 3000)
        args.loopback_calls = min(args.loopback_calls, 60)
        args.concurrent_calls = min(args.concurrent_calls, 256)
    configure_structlog()
    print(machine_summary())
    vs = versions(
        "seawall",
        "httpx",
        "httpcore",
        "h11",
        "anyio",
        "sniffio",
        "uvicorn",
        "tenacity",
        "aiobreaker",
        "opentelemetry-sdk",
        "structlog",
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vs.items()))
    t0 = time.perf_counter()
    anyio.run(amain, args, backend="asyncio")
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
