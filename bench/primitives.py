"""What seawall's primitives cost per call, next to its peers', measured in one run.

    python bench/primitives.py            # full run (a few minutes at most)
    python bench/primitives.py --quick    # smoke run (< 30 s)

Sections:

1. a guarded no-op call (the success path), seawall and peers;
2. rejections: an open breaker, a full bulkhead, and a bare raise-and-catch;
3. memory: many rejections by seawall's open breaker and full bulkhead (and
   purgatory's, known to leak), traced with tracemalloc;
4. httpx/httpcore: a request with ``sniffio`` importable, and with
   ``import sniffio`` failing after a real ``sys.path`` search.

Every case runs once per round, rounds shuffle the order, and figures are
medians over rounds; ratios ("x seawall": the row's time over the seawall
row's) are taken within each round and their median reported. On these
2-core machines, whose speed changes within seconds, compare ratios, not
absolute times from different runs. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.machinery
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import aiobreaker
import anyio
import httpcore
import httpx
import hyx.bulkhead
import hyx.circuitbreaker
import hyx.retry
import hyx.timeout
import purgatory
import pybreaker
import tenacity
from _common import (
    Case,
    Result,
    contention,
    machine_summary,
    measure,
    print_table,
    rss_bytes,
    versions,
)
from hyx.bulkhead.exceptions import BulkheadFull
from hyx.circuitbreaker.exceptions import BreakerFailing
from purgatory.domain.model import OpenedState

import seawall
from seawall import (
    Breaker,
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    Policy,
    Registry,
    Retry,
    Timeouts,
)

NO_TIMEOUTS = Timeouts(connect=None, read=None, write=None, pool=None, attempt=None, total=None)
# Only attempt and total matter to a generic guard; the HTTP ones are left off.
GUARD_TIMEOUTS = Timeouts(connect=None, read=None, write=None, pool=None, attempt=10.0, total=30.0)
# Open for an hour once tripped, so that it stays OPEN for the whole run.
BREAKER = CircuitBreaker(open_duration=3600.0)

POLICIES = {
    "bulkhead": Policy(
        timeouts=NO_TIMEOUTS, retry=None, breaker=None, bulkhead=Bulkhead(max_concurrent=10)
    ),
    "breaker": Policy(timeouts=NO_TIMEOUTS, retry=None, breaker=BREAKER, bulkhead=None),
    "retry": Policy(timeouts=NO_TIMEOUTS, retry=Retry(), breaker=None, bulkhead=None),
    "timeouts": Policy(timeouts=GUARD_TIMEOUTS, retry=None, breaker=None, bulkhead=None),
    "full": Policy(
        timeouts=GUARD_TIMEOUTS,
        retry=Retry(),
        breaker=BREAKER,
        bulkhead=Bulkhead(max_concurrent=10),
    ),
}

G_OK = "1. guarded no-op call (success path), us per call"
G_REJ = "2. rejected call, us per call"
GROUPS = [G_OK, G_REJ]

# Names of the seawall rows the peers are compared with.
SW_BULKHEAD = "seawall guard: bulkhead alone"
SW_BREAKER = "seawall guard: breaker alone"
SW_RETRY = "seawall guard: retry alone"
SW_TIMEOUTS = "seawall guard: attempt + total timeouts alone"
SW_FULL = "seawall guard: full (bulkhead+breaker+retry+timeouts)"
SW_OPEN = "seawall guard: open breaker"
SW_FULL_OPEN = "seawall full guard: open breaker"
SW_ACQUIRE = "seawall Breaker.acquire() on an open breaker"
SW_FULLBH = "seawall guard: full bulkhead (max_wait=0)"
SW_FULL_FULLBH = "seawall full guard: full bulkhead"


async def noop() -> None:
    return None


class Boom(Exception):
    pass


async def fail() -> None:
    raise Boom("boom")


def new_guard(kind: str) -> seawall.Guard:
    # A registry of its own per guard: the state (breaker, bulkhead) is not shared.
    return seawall.guard(kind, POLICIES[kind], registry=Registry())


async def trip(g: seawall.Guard) -> None:
    """Open *g*'s breaker the way a failing dependency would: real failures."""
    for _ in range(BREAKER.minimum_calls):
        with contextlib.suppress(Boom):
            await g.call(fail)
    breaker = g.breaker
    assert breaker is not None
    assert breaker.state is seawall.BreakerState.OPEN, breaker.state


def fill(g: seawall.Guard) -> list[object]:
    bulkhead = g.bulkhead
    assert bulkhead is not None
    tokens = [bulkhead.try_acquire() for _ in range(bulkhead.config.max_concurrent)]
    assert all(t is not None for t in tokens)
    assert bulkhead.try_acquire() is None
    return tokens


# -- loops ------------------------------------------------------------------------
# A case's ``run(n)`` makes n calls and returns how many were rejected. Most
# cases share these two loops, so they pay the same loop cost; seawall's rows
# (and a few peers') also pay for a lambda, about 0.04 us, that a decorated
# peer function does not.


def ok_loop(call: Callable[[], Awaitable[Any]]) -> Callable[[int], Awaitable[int]]:
    async def run(n: int) -> int:
        for _ in range(n):
            await call()
        return 0

    return run


def reject_loop(
    call: Callable[[], Awaitable[Any]], exc: type[BaseException] | tuple[type[BaseException], ...]
) -> Callable[[int], Awaitable[int]]:
    async def run(n: int) -> int:
        k = 0
        for _ in range(n):
            try:
                await call()
            except exc:
                k += 1
        return k

    return run


async def build_cases() -> list[Case]:
    """Every case; built inside the event loop (hyx's timeout needs a running loop).

    seawall's guards are built the way an application builds them at import
    time, which is also before the loop (see ``main``); peers are built here.
    """
    cases: list[Case] = []

    # -- 1. success path ----------------------------------------------------------

    async def bare(n: int) -> int:
        for _ in range(n):
            await noop()
        return 0

    cases.append(Case("baseline: bare await noop()", G_OK, bare))

    for kind, name in [
        ("bulkhead", SW_BULKHEAD),
        ("breaker", SW_BREAKER),
        ("retry", SW_RETRY),
        ("timeouts", SW_TIMEOUTS),
        ("full", SW_FULL),
    ]:
        g = GUARDS[kind]
        cases.append(Case(name, G_OK, ok_loop(lambda g=g: g.call(noop))))

    # aiobreaker: CircuitBreaker().call_async
    ab = aiobreaker.CircuitBreaker(timeout_duration=timedelta(hours=1))
    cases.append(
        Case(
            "aiobreaker CircuitBreaker.call_async",
            G_OK,
            ok_loop(lambda: ab.call_async(noop)),
            ref=SW_BREAKER,
        )
    )

    # purgatory: the AsyncCircuitBreakerFactory decorator (in-memory unit of work)
    pf = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=3600)
    await pf.initialize()
    p_ok = pf("closed")(noop)
    cases.append(
        Case("purgatory AsyncCircuitBreakerFactory decorator", G_OK, ok_loop(p_ok), ref=SW_BREAKER)
    )

    # pybreaker: call_async needs tornado; its sync call() around a function that
    # returns a coroutine, then await.
    pb = pybreaker.CircuitBreaker(reset_timeout=3600)
    cases.append(
        Case(
            "pybreaker CircuitBreaker.call(coro fn), then await",
            G_OK,
            ok_loop(lambda: pb.call(noop)),
            ref=SW_BREAKER,
            note="sync call(): records success before the coroutine even runs",
        )
    )

    hb = hyx.circuitbreaker.consecutive_breaker(failure_threshold=5, recovery_time_secs=3600)
    cases.append(Case("hyx consecutive_breaker decorator", G_OK, ok_loop(hb(noop)), ref=SW_BREAKER))

    hbh = hyx.bulkhead.bulkhead(max_concurrency=10, max_capacity=10)
    cases.append(Case("hyx bulkhead decorator", G_OK, ok_loop(hbh(noop)), ref=SW_BULKHEAD))

    limiter = anyio.CapacityLimiter(10)

    async def limited(n: int) -> int:
        for _ in range(n):
            async with limiter:
                await noop()
        return 0

    cases.append(
        Case(
            "anyio.CapacityLimiter: async with",
            G_OK,
            limited,
            ref=SW_BULKHEAD,
            note="acquire checkpoints: a trip through the event loop",
        )
    )

    async def fail_after(n: int) -> int:
        for _ in range(n):
            with anyio.fail_after(30):
                with anyio.fail_after(10):
                    await noop()
        return 0

    cases.append(Case("anyio.fail_after(30) + fail_after(10)", G_OK, fail_after, ref=SW_TIMEOUTS))

    tenacity_kw: dict[str, Any] = {
        "stop": tenacity.stop_after_attempt(3),
        "wait": tenacity.wait_random_exponential(multiplier=0.1, max=10),
        "retry": tenacity.retry_if_exception_type((TimeoutError, ConnectionError)),
        "reraise": True,
    }
    t_noop = tenacity.retry(**tenacity_kw)(noop)
    cases.append(Case("tenacity @retry (AsyncRetrying)", G_OK, ok_loop(t_noop), ref=SW_RETRY))

    # A hand-assembled stack doing what the full guard does.
    ab2 = aiobreaker.CircuitBreaker(timeout_duration=timedelta(hours=1))
    limiter2 = anyio.CapacityLimiter(10)

    async def attempt() -> None:
        async with limiter2:
            with anyio.fail_after(10):
                await noop()

    t_attempt = tenacity.retry(**tenacity_kw)(ab2.call_async)

    async def hand_stack(n: int) -> int:
        for _ in range(n):
            with anyio.fail_after(30):
                await t_attempt(attempt)
        return 0

    cases.append(
        Case(
            "hand stack: fail_after+tenacity+aiobreaker+CapacityLimiter+fail_after",
            G_OK,
            hand_stack,
            ref=SW_FULL,
        )
    )

    # The same stack from hyx: timeout > retry > breaker > bulkhead > timeout.
    hb2 = hyx.circuitbreaker.consecutive_breaker(failure_threshold=5, recovery_time_secs=3600)
    hbh2 = hyx.bulkhead.bulkhead(max_concurrency=10, max_capacity=10)
    h_stack = hyx.timeout.timeout(30)(
        hyx.retry.retry(on=(TimeoutError, ConnectionError), attempts=3, backoff=0.1)(
            hb2(hbh2(hyx.timeout.timeout(10)(noop)))
        )
    )
    cases.append(
        Case(
            "hyx stack: timeout+retry+breaker+bulkhead+timeout",
            G_OK,
            ok_loop(h_stack),
            ref=SW_FULL,
            note="hyx's timeout runs the call in a new task",
        )
    )

    # -- 2. rejections ------------------------------------------------------------

    class Rejected(Exception):
        pass

    async def reject() -> None:
        raise Rejected("rejected")

    cases.append(
        Case(
            "baseline: await a coroutine raising a fresh exception, catch",
            G_REJ,
            reject_loop(reject, Rejected),
            rejects=True,
        )
    )

    g_open = GUARDS["open"]
    g_full_open = GUARDS["full_open"]
    cases.append(
        Case(
            SW_OPEN,
            G_REJ,
            reject_loop(lambda: g_open.call(noop), CircuitOpenError),
            rejects=True,
        )
    )
    cases.append(
        Case(
            SW_FULL_OPEN,
            G_REJ,
            reject_loop(lambda: g_full_open.call(noop), CircuitOpenError),
            rejects=True,
        )
    )
    open_breaker: Breaker = g_open.breaker  # type: ignore[assignment]

    async def bare_acquire(n: int) -> int:
        acquire = open_breaker.acquire
        k = 0
        for _ in range(n):
            try:
                acquire()
            except CircuitOpenError:
                k += 1
        return k

    cases.append(Case(SW_ACQUIRE, G_REJ, bare_acquire, rejects=True))

    g_fullbh = GUARDS["fullbh"]
    g_full_fullbh = GUARDS["full_fullbh"]
    cases.append(
        Case(
            SW_FULLBH,
            G_REJ,
            reject_loop(lambda: g_fullbh.call(noop), BulkheadFullError),
            rejects=True,
        )
    )
    cases.append(
        Case(
            SW_FULL_FULLBH,
            G_REJ,
            reject_loop(lambda: g_full_fullbh.call(noop), BulkheadFullError),
            rejects=True,
        )
    )

    ab_open = aiobreaker.CircuitBreaker(timeout_duration=timedelta(hours=1))
    ab_open.open()
    cases.append(
        Case(
            "aiobreaker open: call_async",
            G_REJ,
            reject_loop(lambda: ab_open.call_async(noop), aiobreaker.CircuitBreakerError),
            ref=SW_OPEN,
            rejects=True,
        )
    )

    pf_open = purgatory.AsyncCircuitBreakerFactory(default_threshold=1, default_ttl=3600)
    await pf_open.initialize()
    with contextlib.suppress(Boom):
        await pf_open("open")(fail)()
    p_open = pf_open("open")(noop)
    p_context = (await pf_open.get_breaker("open")).context
    assert isinstance(p_context._state, OpenedState)

    async def purgatory_reset() -> None:
        # purgatory re-raises one stored exception, whose traceback grows by a few
        # frames on every rejection (see section 3); drop it between batches so
        # the timing run does not pile up memory.
        p_context._state.__traceback__ = None

    cases.append(
        Case(
            "purgatory open: decorator",
            G_REJ,
            reject_loop(p_open, OpenedState),
            ref=SW_OPEN,
            rejects=True,
            before=purgatory_reset,
        )
    )

    pb_open = pybreaker.CircuitBreaker(reset_timeout=3600)
    pb_open.open()
    cases.append(
        Case(
            "pybreaker open: call",
            G_REJ,
            reject_loop(lambda: pb_open.call(noop), pybreaker.CircuitBreakerError),
            ref=SW_OPEN,
            rejects=True,
        )
    )

    hb_open = hyx.circuitbreaker.consecutive_breaker(failure_threshold=1, recovery_time_secs=3600)
    with contextlib.suppress(Boom):
        await hb_open(fail)()
    cases.append(
        Case(
            "hyx consecutive_breaker open: decorator",
            G_REJ,
            reject_loop(hb_open(noop), BreakerFailing),
            ref=SW_OPEN,
            rejects=True,
        )
    )

    hbh_full = hyx.bulkhead.bulkhead(max_concurrency=10, max_capacity=10)
    for _ in range(10):
        await hbh_full._manager.acquire()
    cases.append(
        Case(
            "hyx bulkhead full: decorator",
            G_REJ,
            reject_loop(hbh_full(noop), BulkheadFull),
            ref=SW_FULLBH,
            rejects=True,
        )
    )

    full_limiter = anyio.CapacityLimiter(10)
    for _ in range(10):
        full_limiter.acquire_on_behalf_of_nowait(object())

    async def limiter_nowait(n: int) -> int:
        acquire = full_limiter.acquire_on_behalf_of_nowait
        k = 0
        for _ in range(n):
            try:
                acquire(object())
            except anyio.WouldBlock:
                k += 1
        return k

    cases.append(
        Case(
            "anyio.CapacityLimiter full: acquire_on_behalf_of_nowait",
            G_REJ,
            limiter_nowait,
            ref=SW_FULLBH,
            rejects=True,
            note="the bare primitive seawall's bulkhead is built on: a floor, not a peer",
        )
    )

    return cases


# Built before the event loop starts (in main), as an application does at import time.
GUARDS: dict[str, seawall.Guard] = {}


def make_guards() -> None:
    for kind in ("bulkhead", "breaker", "retry", "timeouts", "full"):
        GUARDS[kind] = new_guard(kind)
    GUARDS["open"] = new_guard("breaker")
    GUARDS["full_open"] = new_guard("full")
    GUARDS["fullbh"] = new_guard("bulkhead")
    GUARDS["full_fullbh"] = new_guard("full")


async def prepare_guards() -> None:
    await trip(GUARDS["open"])
    await trip(GUARDS["full_open"])
    fill(GUARDS["fullbh"])
    fill(GUARDS["full_fullbh"])


# -- 3. memory --------------------------------------------------------------------


async def memory_case(
    label: str, run: Callable[[int], Awaitable[int]], n: int, chunk: int = 10_000
) -> dict[str, Any]:
    await run(1000)  # warm up: lazy state, caches
    gc.collect()
    rss0 = rss_bytes()
    objects0 = len(gc.get_objects())
    tracemalloc.start()
    traced0 = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    done = 0
    while done < n:
        step = min(chunk, n - done)
        rejected = await run(step)
        assert rejected == step, (label, rejected, step)
        done += step
    elapsed = time.perf_counter() - t0
    gc.collect()
    traced1, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    objects1 = len(gc.get_objects())
    rss1 = rss_bytes()
    grown = traced1 - traced0
    return {
        "label": label,
        "n": n,
        "traced_growth": grown,
        "per_call": grown / n,
        "peak": peak - traced0,
        "objects": objects1 - objects0,
        "rss_growth": rss1 - rss0,
        "seconds": elapsed,
    }


async def memory_section(n_seawall: int, n_purgatory: int) -> list[dict[str, Any]]:
    out = []
    g_open, g_fullbh = GUARDS["open"], GUARDS["fullbh"]
    out.append(
        await memory_case(
            "seawall guard: open breaker",
            reject_loop(lambda: g_open.call(noop), CircuitOpenError),
            n_seawall,
        )
    )
    out.append(
        await memory_case(
            "seawall guard: full bulkhead",
            reject_loop(lambda: g_fullbh.call(noop), BulkheadFullError),
            n_seawall,
        )
    )
    pf = purgatory.AsyncCircuitBreakerFactory(default_threshold=1, default_ttl=3600)
    await pf.initialize()
    with contextlib.suppress(Boom):
        await pf("mem")(fail)()
    p_open = pf("mem")(noop)
    out.append(
        await memory_case("purgatory open breaker", reject_loop(p_open, OpenedState), n_purgatory)
    )
    # Let go of what purgatory kept.
    (await pf.get_breaker("mem")).context._state.__traceback__ = None
    gc.collect()
    return out


def print_memory(rows: list[dict[str, Any]], n_seawall: int) -> None:
    print()
    print("3. memory over many rejections (tracemalloc, after gc.collect())")
    header = (
        f"{'case':<32} {'calls':>9} {'traced growth':>14} {'per call':>10} "
        f"{'peak':>10} {'objects':>8} {'RSS growth':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['label']:<32} {r['n']:>9,} {_size(r['traced_growth']):>14} "
            f"{r['per_call']:>8.1f} B {_size(r['peak']):>10} {r['objects']:>8,} "
            f"{_size(r['rss_growth']):>11}"
        )
        if r["n"] < n_seawall and r["per_call"] > 16:
            print(f"    extrapolated to {n_seawall:,} calls: {_size(r['per_call'] * n_seawall)}")


def _size(b: float) -> str:
    sign = "-" if b < 0 else ""
    b = abs(b)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{sign}{b:.0f} {unit}" if unit == "B" else f"{sign}{b:.1f} {unit}"
        b /= 1024
    raise AssertionError


# -- 4. httpx/httpcore and sniffio ------------------------------------------------


class HideSniffio(importlib.machinery.PathFinder):
    """Make ``import sniffio`` fail the way it does where sniffio is not installed.

    For ``sniffio`` it runs the real ``sys.path`` search (for a name that does
    not exist, so it fails like the real one would), then raises
    ModuleNotFoundError; other names fall through to the normal finders.
    """

    @classmethod
    def find_spec(cls, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "sniffio":
            return None
        super().find_spec("sniffio_not_installed_", path, target)
        raise ModuleNotFoundError("No module named 'sniffio'", name="sniffio")


def set_sniffio(importable: bool) -> None:
    if importable:
        if HideSniffio in sys.meta_path:
            sys.meta_path.remove(HideSniffio)
    else:
        sys.modules.pop("sniffio", None)
        if HideSniffio not in sys.meta_path:
            sys.meta_path.insert(0, HideSniffio)


RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


def mock_network_client(requests: int) -> httpx.AsyncClient:
    """An AsyncClient whose httpcore pool talks to httpcore's in-memory network backend.

    The whole httpcore path runs (pool, locks, h11), with no socket; every read
    returns one canned keep-alive response. (``_pool`` is private: bench only.)
    """
    transport = httpx.AsyncHTTPTransport()
    transport._pool = httpcore.AsyncConnectionPool(
        network_backend=httpcore.AsyncMockBackend([RESPONSE] * (requests + 10))
    )
    return httpx.AsyncClient(transport=transport, base_url="http://upstream.test")


async def count_sniffio_calls() -> int:
    import httpcore._synchronization as sync

    calls = 0
    real = sync.current_async_library

    def counting() -> str:
        nonlocal calls
        calls += 1
        return real()

    sync.current_async_library = counting
    try:
        async with mock_network_client(1) as client:
            await client.get("/")
            calls = 0
            await client.get("/")
    finally:
        sync.current_async_library = real
    return calls


async def httpx_section(rounds: int, per_round: int) -> dict[str, Any]:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="ok")

    total = (rounds + 1) * per_round
    # Clients are built once, outside the timed part (an AsyncHTTPTransport loads
    # the CA bundle when built: milliseconds).
    clients = {
        "MockTransport": httpx.AsyncClient(
            transport=httpx.MockTransport(handler), base_url="http://upstream.test"
        ),
        "httpcore mock network": mock_network_client(2 * total),
    }
    variants = [(name, importable) for name in clients for importable in (True, False)]
    times: dict[tuple[str, bool], list[float]] = {v: [] for v in variants}

    async def batch(client: httpx.AsyncClient, n: int) -> float:
        t0 = time.thread_time_ns()
        for _ in range(n):
            r = await client.get("/")
            if r.status_code != 200:
                raise AssertionError(r)
        return (time.thread_time_ns() - t0) / n / 1000

    for name, importable in variants:  # warm up, and open the kept-alive connection
        set_sniffio(importable)
        await batch(clients[name], per_round // 2)
    rng = random.Random(1)
    order = list(variants)
    for _ in range(rounds):
        rng.shuffle(order)
        for name, importable in order:
            set_sniffio(importable)
            times[(name, importable)].append(await batch(clients[name], per_round))
    set_sniffio(True)
    for client in clients.values():
        await client.aclose()
    counts = await count_sniffio_calls()
    return {
        "times": times,
        "rounds": rounds,
        "per_round": per_round,
        "counts": counts,
        "import_us": failing_import_us(),
    }


def failing_import_us(n: int = 2000) -> tuple[float, float]:
    """Microseconds per ``import sniffio``: cached in sys.modules, and failing."""

    def loop() -> float:
        failed = 0
        t0 = time.thread_time_ns()
        for _ in range(n):
            try:
                import sniffio  # noqa: F401
            except ImportError:
                failed += 1
        elapsed = time.thread_time_ns() - t0
        if failed not in (0, n):
            raise AssertionError(failed)
        return elapsed / n / 1000

    ok, failing = [], []
    for _ in range(5):
        set_sniffio(True)
        ok.append(loop())
        set_sniffio(False)
        failing.append(loop())
    set_sniffio(True)
    import sniffio  # noqa: F401 - back in sys.modules

    return statistics.median(ok), statistics.median(failing)


def print_httpx(res: dict[str, Any]) -> None:
    times = res["times"]
    print()
    print(
        f"4. httpx AsyncClient.get, CPU us per request ({res['rounds']} rounds x "
        f"{res['per_round']} requests per variant, interleaved)"
    )
    header = f"{'transport':<24} {'sniffio':>10} {'hidden':>10} {'difference':>11} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for name in ("MockTransport", "httpcore mock network"):
        with_s, without = times[(name, True)], times[(name, False)]
        diffs = [b - a for a, b in zip(with_s, without, strict=True)]
        ratios = [b / a for a, b in zip(with_s, without, strict=True)]
        print(
            f"{name:<24} {statistics.median(with_s):>10.1f} {statistics.median(without):>10.1f} "
            f"{statistics.median(diffs):>+11.1f} {statistics.median(ratios):>7.2f}"
        )
    ok, failing = res["import_us"]
    print(
        f"    httpcore's current_async_library() runs {res['counts']} times per request on a "
        "kept-alive connection (one task); MockTransport does not use httpcore at all.\n"
        f"    `import sniffio`: {ok:.2f} us when importable (sys.modules), {failing:.1f} us "
        f"when it fails ({len(sys.path)} sys.path entries)"
    )


# -- aims and main ------------------------------------------------------------------

AIMS = [
    (
        SW_OPEN,
        2.0,
        [
            "aiobreaker open: call_async",
            "purgatory open: decorator",
            "pybreaker open: call",
            "hyx consecutive_breaker open: decorator",
        ],
    ),
    (SW_FULLBH, 2.5, ["hyx bulkhead full: decorator"]),
    (
        SW_FULL,
        15.0,
        [
            "hand stack: fail_after+tenacity+aiobreaker+CapacityLimiter+fail_after",
            "hyx stack: timeout+retry+breaker+bulkhead+timeout",
        ],
    ),
]


def print_aims(results: dict[str, Result], memory: list[dict[str, Any]]) -> None:
    print()
    print("aims")
    for name, limit, peers in AIMS:
        med, best = results[name].median, results[name].best
        status = "ok  " if med < limit else "MISS"
        print(f"  [{status}] {name}: median {med:.2f} us, best {best:.2f} us (aim < {limit} us)")
        for p in peers:
            sw_per_round = results[name].per_call_us
            peer_per_round = results[p].per_call_us
            ratio = statistics.median(
                b / a for a, b in zip(sw_per_round, peer_per_round, strict=True)
            )
            status = "ok  " if ratio > 1 else "MISS"
            print(f"  [{status}]   beats {p}: peer takes {ratio:.2f}x seawall's time")
    for r in memory:
        if r["label"].startswith("seawall"):
            status = "ok  " if abs(r["per_call"]) < 0.01 else "MISS"
            print(
                f"  [{status}] {r['label']}: {r['traced_growth']:+,} B traced after "
                f"{r['n']:,} rejections"
            )


def speed_phases(results: dict[str, Result]) -> str:
    base = results["baseline: bare await noop()"].per_call_us
    full = results[SW_FULL].per_call_us
    return (
        f"speed phases: over rounds the bare-await baseline ranged {min(base):.3f}-"
        f"{max(base):.3f} us ({max(base) / min(base):.2f}x), the full guard "
        f"{min(full):.2f}-{max(full):.2f} us ({max(full) / min(full):.2f}x) of CPU time; "
        f"wall-clock / CPU time over all batches: {contention(results):.2f} "
        "(above 1: other processes had the cores)"
    )


PROFILE_CASES = {
    "open": ("open", CircuitOpenError),
    "full_open": ("full_open", CircuitOpenError),
    "fullbh": ("fullbh", BulkheadFullError),
    "full_fullbh": ("full_fullbh", BulkheadFullError),
    "full": ("full", None),
    "breaker": ("breaker", None),
    "bulkhead": ("bulkhead", None),
}


async def profile(which: str, n: int) -> None:
    """cProfile one seawall case (function-level; the profiler inflates small calls)."""
    import cProfile
    import pstats

    key, exc = PROFILE_CASES[which]
    g = GUARDS[key]
    call = lambda: g.call(noop)  # noqa: E731
    run = ok_loop(call) if exc is None else reject_loop(call, exc)
    await run(1000)
    prof = cProfile.Profile()
    prof.enable()
    await run(n)
    prof.disable()
    print(f"cProfile of {which!r}, {n:,} calls, sorted by own time:")
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


async def amain(args: argparse.Namespace) -> None:
    await prepare_guards()
    if args.profile:
        await profile(args.profile, args.profile_calls)
        return
    cases = await build_cases()
    t0 = time.perf_counter()

    def progress(r: int) -> None:
        print(
            f"  round {r + 1}/{args.rounds} done ({time.perf_counter() - t0:.1f} s)",
            file=sys.stderr,
        )

    results = await measure(cases, rounds=args.rounds, calls=args.calls, progress=progress)
    print(
        f"{len(cases)} cases, {args.rounds} rounds x {args.calls} calls, interleaved. "
        "Microseconds of CPU time per call: median and p25-p75 over rounds, best round.\n"
        "'x seawall': this row's time / the time of the seawall row named in 'vs', the "
        "median of per-round ratios, and '(best)' the ratio of best rounds; "
        "> 1: seawall is faster."
    )
    print_table(results, GROUPS)
    print()
    print(speed_phases(results))
    memory: list[dict[str, Any]] = []
    if not args.skip_memory:
        memory = await memory_section(args.memory_calls, args.memory_calls_purgatory)
        print_memory(memory, args.memory_calls)
    if not args.skip_httpx:
        print_httpx(await httpx_section(args.httpx_rounds, args.httpx_requests))
    print_aims(results, memory)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (15)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per case per round (2000)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (< 30 s)")
    parser.add_argument(
        "--memory-calls",
        type=int,
        default=1_000_000,
        help="rejections per seawall memory case (1,000,000)",
    )
    parser.add_argument(
        "--memory-calls-purgatory",
        type=int,
        default=100_000,
        help="rejections for purgatory's memory case (100,000)",
    )
    parser.add_argument("--httpx-rounds", type=int, default=10)
    parser.add_argument(
        "--httpx-requests", type=int, default=200, help="requests per variant per round (200)"
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-httpx", action="store_true")
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILE_CASES),
        help="only cProfile one seawall case (e.g. open, fullbh, full)",
    )
    parser.add_argument("--profile-calls", type=int, default=200_000)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 5)
        args.calls = min(args.calls, 300)
        args.memory_calls = min(args.memory_calls, 50_000)
        args.memory_calls_purgatory = min(args.memory_calls_purgatory, 5_000)
        args.httpx_rounds = min(args.httpx_rounds, 4)
        args.httpx_requests = min(args.httpx_requests, 50)
    print(machine_summary())
    vs = versions(
        "seawall",
        "anyio",
        "aiobreaker",
        "purgatory",
        "pybreaker",
        "hyx",
        "tenacity",
        "httpx",
        "httpcore",
        "sniffio",
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vs.items()))
    t0 = time.perf_counter()
    make_guards()
    anyio.run(amain, args, backend="asyncio")
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
