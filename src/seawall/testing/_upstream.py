"""A fault-injecting HTTP/1.1 server on loopback, for tests.

:class:`FaultyUpstream` is a real HTTP server listening on a real TCP socket, so
the code under test goes through its whole network stack (httpx, httpcore, the
connection pool, the kernel) exactly as it would in production. Each path can be
given a *script* of :class:`Fault` values: latency, error statuses with
``Retry-After``, connection resets, hangs, slow or truncated bodies and bytes
that are not HTTP at all. Every request is recorded as a
:class:`RecordedRequest`, so tests can assert what the client actually sent:
how many attempts, which idempotency keys, which bodies.

The server runs its own asyncio event loop in a daemon thread. That makes it
usable from plain sync tests, pytest fixtures, asyncio tests and trio tests
alike, and its delays never block the event loop of the code under test.

Example::

    import httpx
    from seawall.testing._upstream import Fault, FaultyUpstream

    with FaultyUpstream() as upstream:
        upstream.route(
            "/orders",
            Fault.error(503, retry_after=1),   # first request
            Fault.latency(0.2),                # second request
            Fault.ok(),                        # third and every later request
        )
        with httpx.Client(base_url=upstream.url) as client:
            assert client.get("/orders").status_code == 503
            ...
        assert upstream.count("/orders") == 3

Responses for a :class:`Fault` whose ``body`` is ``None`` carry a small JSON
body, ``{"path": "/orders", "n": 3}``, where ``n`` counts the requests seen on
that path, so a test can tell which attempt a response belongs to.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import math
import random
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import MappingProxyType, TracebackType
from typing import Self, cast

import anyio.to_thread
import h11

__all__ = ["Fault", "FaultyUpstream", "RecordedRequest"]

_log = logging.getLogger(__name__)

# What the server answers with when a Fault's ``invalid`` flag is set.
_GARBAGE = b"NOT HTTP\r\n\r\n"
# Statuses that must not carry a body (RFC 9110 6.4.1); HEAD never gets one either.
_NO_BODY_STATUSES = frozenset({204, 304})
# Headers the server computes itself; letting a Fault set them would make the
# framing lie in ways h11 refuses to write (use ``truncate`` for a short body).
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})
# How long stop() waits for the server thread before declaring it stuck.
_STOP_TIMEOUT = 5.0
# How long start() waits for the server thread to come up.
_START_TIMEOUT = 5.0
_RECV_SIZE = 65536


def _check_delay(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"Fault.{name}: must be finite, got {value!r}")
    if value < 0:
        raise ValueError(f"Fault.{name}: must be >= 0, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """How the server answers one request: a healthy response, or one way of failing.

    A ``Fault()`` with no arguments is a healthy ``200`` with the default JSON body.
    ``delay`` applies first, before any other behaviour; then at most one of
    ``reset``, ``blackhole``, ``invalid`` and ``truncate`` decides how the
    exchange breaks. ``body_delay`` combines with ``truncate`` (half the body,
    a pause, then the close). Invalid combinations raise :class:`ValueError`
    naming the field, e.g. ``Fault.delay: must be >= 0, got -1``.

    Use :func:`dataclasses.replace` to vary a shortcut, e.g.
    ``dataclasses.replace(Fault.error(503), ratio=0.3, seed=7)``.
    """

    status: int = 200
    """Response status, 200..599 (a 1xx cannot be a final response)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra response headers, e.g. ``{"Retry-After": "2"}``. Framing headers
    (Content-Length, Transfer-Encoding) are computed by the server."""
    body: bytes | None = None
    """Response body; ``None`` means ``{"path": ..., "n": ...}`` as JSON, with
    ``n`` the 1-based count of requests seen on the path."""
    delay: float = 0.0
    """Seconds to wait before the status line (or before the reset, garbage...)."""
    body_delay: float = 0.0
    """Seconds to stall after the headers and the first half of the body."""
    reset: bool = False
    """Read the request, then close with a TCP RST and send nothing."""
    blackhole: bool = False
    """Read the request and never answer; the connection stays open until the
    client closes it or the server stops."""
    truncate: bool = False
    """Announce the full Content-Length, send half the body, then close."""
    invalid: bool = False
    """Answer with bytes that are not HTTP (``NOT HTTP``), then close."""
    ratio: float = 1.0
    """Probability that this fault applies to a request; otherwise the request
    gets a healthy ``200``. The script still advances either way."""
    seed: int | None = None
    """Seed of the random generator that rolls ``ratio``: the same seed gives the
    same sequence each time the fault is routed."""

    def __post_init__(self) -> None:
        if isinstance(self.status, bool) or not isinstance(self.status, int):
            raise TypeError(f"Fault.status: must be an int, got {self.status!r}")
        if not 200 <= self.status <= 599:
            raise ValueError(f"Fault.status: must be in 200..599, got {self.status!r}")
        _check_delay("delay", self.delay)
        _check_delay("body_delay", self.body_delay)
        if not (math.isfinite(self.ratio) and 0.0 <= self.ratio <= 1.0):
            raise ValueError(f"Fault.ratio: must be in [0, 1], got {self.ratio!r}")
        if self.body is not None:
            if not isinstance(self.body, bytes | bytearray | memoryview):
                raise TypeError(
                    f"Fault.body: must be bytes or None, got {type(self.body).__name__}"
                )
            object.__setattr__(self, "body", bytes(self.body))
        modes = [n for n in ("reset", "blackhole", "invalid", "truncate") if getattr(self, n)]
        if len(modes) > 1:
            raise ValueError(f"Fault.{modes[1]}: cannot be combined with {modes[0]}")
        if self.body_delay and modes and modes[0] != "truncate":
            raise ValueError(f"Fault.body_delay: has no effect with {modes[0]}")
        if self.status in _NO_BODY_STATUSES:
            if self.body:
                raise ValueError(f"Fault.body: a {self.status} response cannot have a body")
            if self.truncate:
                raise ValueError(f"Fault.truncate: a {self.status} response has no body to cut")
        if self.truncate and self.body is not None and not self.body:
            raise ValueError("Fault.truncate: needs a non-empty body to cut in half")
        self._freeze_headers()

    def _freeze_headers(self) -> None:
        headers = dict(self.headers)
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError(
                    f"Fault.headers: names and values must be str, got {name!r}: {value!r}"
                )
            if name.lower() in _FRAMING_HEADERS:
                raise ValueError(f"Fault.headers: {name} is set by the server, got {value!r}")
            try:
                # h11 validates header syntax when the response is written; doing
                # it here turns a server-thread crash into an error at the call site.
                h11.Response(
                    status_code=200, headers=[(name.encode("latin-1"), value.encode("latin-1"))]
                )
            except (UnicodeEncodeError, h11.LocalProtocolError) as exc:
                raise ValueError(
                    f"Fault.headers: invalid header {name!r}: {value!r} ({exc})"
                ) from None
        # A private read-only copy: mutating the caller's dict later must not
        # change a fault that is already routed.
        object.__setattr__(self, "headers", MappingProxyType(headers))

    def __hash__(self) -> int:
        return hash(
            tuple(
                tuple(sorted(v.items())) if f.name == "headers" else v
                for f in dataclasses.fields(self)
                for v in (getattr(self, f.name),)
            )
        )

    def __repr__(self) -> str:
        # Only the fields that differ from a healthy response: chaos-matrix
        # failure messages stay readable.
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "headers":
                if value:
                    parts.append(f"headers={dict(value)!r}")
            elif value != f.default:
                parts.append(f"{f.name}={value!r}")
        return f"Fault({', '.join(parts)})"

    @classmethod
    def ok(cls) -> Fault:
        """A healthy ``200`` with the default JSON body."""
        return cls()

    @classmethod
    def latency(cls, seconds: float) -> Fault:
        """A healthy ``200`` sent after ``seconds`` of silence."""
        return cls(delay=seconds)

    @classmethod
    def error(cls, status: int = 500, retry_after: float | str | None = None) -> Fault:
        """An error response (400..599), optionally with a ``Retry-After`` header.

        A numeric ``retry_after`` is written as delta-seconds (``2``, ``0.5``); a
        string is sent verbatim (an HTTP-date, or garbage to test parsing).
        """
        if not 400 <= status <= 599:
            raise ValueError(f"Fault.error: status must be in 400..599, got {status!r}")
        headers: dict[str, str] = {}
        if retry_after is not None:
            if isinstance(retry_after, str):
                headers["Retry-After"] = retry_after
            elif float(retry_after).is_integer():
                headers["Retry-After"] = str(int(retry_after))
            else:
                headers["Retry-After"] = str(retry_after)
        return cls(status=status, headers=headers)

    @classmethod
    def reset_connection(cls) -> Fault:
        """Read the request, then drop the connection with a TCP RST."""
        return cls(reset=True)

    @classmethod
    def hang(cls) -> Fault:
        """Read the request and never answer (a blackhole): the client's read timeout fires."""
        return cls(blackhole=True)

    @classmethod
    def slow_body(cls, seconds: float) -> Fault:
        """Send the headers and half the body, stall ``seconds``, then send the rest."""
        return cls(body_delay=seconds)

    @classmethod
    def truncated(cls) -> Fault:
        """Announce the full Content-Length, send half the body, then close."""
        return cls(truncate=True)

    @classmethod
    def garbage(cls) -> Fault:
        """Answer with bytes that are not HTTP, then close."""
        return cls(invalid=True)


_HEALTHY = Fault()


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the server received it, recorded before any fault applied."""

    method: str
    """Request method, e.g. ``"GET"``."""
    path: str
    """Request path without the query string."""
    target: str
    """Raw request target, query string included."""
    headers: tuple[tuple[str, str], ...]
    """Headers in the order received, names lower-cased."""
    body: bytes
    """Request body, de-chunked."""
    idempotency_key: str | None
    """The ``Idempotency-Key`` header's value, if the request had one."""
    at: float
    """:func:`time.monotonic` when the request head was received."""

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive); repeated headers are
        joined with ``", "``; ``None`` if absent."""
        wanted = name.lower()
        values = [v for k, v in self.headers if k == wanted]
        return ", ".join(values) if values else None


class _Script:
    """A path's faults and how far successive requests have consumed them."""

    __slots__ = ("_cursor", "_steps")

    def __init__(self, faults: tuple[Fault, ...]) -> None:
        # Each step gets its own generator, seeded afresh on every route() call,
        # so a seeded ratio replays the same sequence whenever it is routed.
        self._steps = [
            (f, random.Random(f.seed) if f.ratio < 1.0 else None) for f in faults or (_HEALTHY,)
        ]
        self._cursor = 0

    def next(self) -> Fault:
        fault, rng = self._steps[self._cursor]
        if self._cursor < len(self._steps) - 1:
            self._cursor += 1
        if rng is not None and rng.random() >= fault.ratio:
            return _HEALTHY
        return fault


class _Disconnected(Exception):
    """The client went away while the server was waiting to answer."""


def _check_faults(faults: tuple[Fault, ...]) -> None:
    for f in faults:
        if not isinstance(f, Fault):
            raise TypeError(f"expected Fault values, got {type(f).__name__}: {f!r}")


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _readable(sock: socket.socket) -> None:
    """Wait until ``sock`` has data or EOF, without consuming anything.

    Waiting for readiness instead of racing a ``sock_recv`` against a timer means
    a timeout can never swallow bytes that had already been read.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, _wake, fut)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


def _try_recv(sock: socket.socket) -> bytes | None:
    """Non-blocking read: data, ``b""`` on EOF or reset, ``None`` if nothing yet."""
    try:
        return sock.recv(_RECV_SIZE)
    except (BlockingIOError, InterruptedError):
        return None
    except ConnectionError:
        return b""


async def _recv(sock: socket.socket) -> bytes:
    while True:
        data = _try_recv(sock)
        if data is not None:
            return data
        await _readable(sock)


async def _pause(sock: socket.socket, conn: h11.Connection, seconds: float) -> None:
    """Sleep ``seconds``, but raise :class:`_Disconnected` as soon as the client leaves.

    Without this a client that timed out would leave a task sleeping on a dead
    connection, and ``open_connections`` would lie about the client's pool.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (remaining := deadline - loop.time()) > 0:
        try:
            async with asyncio.timeout(remaining):
                await _readable(sock)
        except TimeoutError:
            return
        data = _try_recv(sock)
        if data is None:
            continue
        if not data:
            raise _Disconnected
        # A pipelined next request: keep it for the next cycle.
        conn.receive_data(data)


async def _hold(sock: socket.socket) -> None:
    """Keep a blackholed connection open until the client closes it."""
    while await _recv(sock):
        pass


def _send(conn: h11.Connection, event: h11.Event) -> bytes:
    # h11 returns None only for ConnectionClosed, which is never sent here.
    return conn.send(event) or b""


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _default_body(path: str, n: int) -> bytes:
    return json.dumps({"path": path, "n": n}).encode()


def _family_and_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return family, (str(address[0]), int(address[1]))


class FaultyUpstream:
    """A fault-injecting HTTP/1.1 server on loopback, running in a background thread.

    Use it as a context manager (sync or async) or call :meth:`start` and
    :meth:`stop`. Script paths with :meth:`route`, then inspect what arrived
    with :meth:`requests`, :meth:`count` and :attr:`open_connections`. All
    methods are thread-safe. Connections are HTTP/1.1 keep-alive (``Connection:
    close`` is honoured); accepted sockets get ``TCP_NODELAY`` so small
    responses are not held back by delayed ACKs.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        """Configure the server; nothing is bound until :meth:`start`."""
        self._host = host
        self._requested_port = port
        # One lock for all state shared with the server thread; the condition
        # lets wait_for_open_connections() sleep instead of polling.
        self._state = threading.Condition(threading.Lock())
        self._routes: dict[str, _Script] = {}
        self._default = _Script(())
        self._log: list[RecordedRequest] = []
        self._seen: dict[str, int] = {}
        self._open = 0
        # start()/stop() are serialised separately so a slow stop never holds
        # the state lock the server thread needs.
        self._lifecycle = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._address: tuple[str, int] | None = None
        self._crash: BaseException | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> Self:
        """Bind, start serving in a daemon thread and return ``self``.

        Raises :class:`OSError` naming the address if it cannot listen (port
        busy), :class:`RuntimeError` if already running. A stopped server can be
        started again.
        """
        with self._lifecycle:
            if self._thread is not None:
                raise RuntimeError("FaultyUpstream is already running")
            listener = self._listen()
            self._address = listener.getsockname()[:2]
            self._crash = None
            ready = threading.Event()
            thread = threading.Thread(
                target=self._run,
                args=(listener, ready),
                name=f"FaultyUpstream:{self._address[1]}",
                daemon=True,
            )
            thread.start()
            if not ready.wait(_START_TIMEOUT):  # pragma: no cover - a wedged machine
                raise RuntimeError("FaultyUpstream: server thread did not start")
            if self._crash is not None:
                thread.join(_STOP_TIMEOUT)
                raise RuntimeError("FaultyUpstream: server thread failed") from self._crash
            self._thread = thread
            return self

    def stop(self) -> None:
        """Close the listener and every open connection, then join the thread.

        Blackholed and delayed connections are closed too, so clients waiting on
        them see the connection drop. Idempotent. Raises :class:`RuntimeError`
        if the thread does not finish within a few seconds.
        """
        with self._lifecycle:
            thread, loop, stop_event = self._thread, self._loop, self._stop_event
            if thread is None:
                return
            self._thread = None
            if loop is not None and stop_event is not None and thread.is_alive():
                with contextlib.suppress(RuntimeError):  # the loop already closed
                    loop.call_soon_threadsafe(stop_event.set)
            thread.join(_STOP_TIMEOUT)
            if thread.is_alive():  # pragma: no cover - would be a bug in shutdown
                raise RuntimeError("FaultyUpstream: server thread did not stop")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        # Binding and spawning the thread takes about a millisecond: fine inline.
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Joining the thread may take a moment; keep the caller's loop running.
        await anyio.to_thread.run_sync(self.stop)

    def _listen(self) -> socket.socket:
        family, address = _family_and_address(self._host, self._requested_port)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if sys.platform != "win32":
                # Lets a fixed port be reused right after stop() despite TIME_WAIT;
                # on Windows the same option would allow stealing a busy port.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno,
                f"FaultyUpstream cannot listen on {self._host}:{self._requested_port}: {exc.strerror}",
            ) from exc
        return sock

    # -- addresses -----------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the server listens (or last listened) on."""
        if self._address is None:
            raise RuntimeError("FaultyUpstream has not been started")
        return self._address[1]

    @property
    def url(self) -> str:
        """Base URL, e.g. ``"http://127.0.0.1:54321"`` (no trailing slash)."""
        if self._address is None:
            raise RuntimeError("FaultyUpstream has not been started")
        host = self._address[0]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._address[1]}"

    def __repr__(self) -> str:
        where = self.url if self._address is not None else "unstarted"
        running = "running" if self._thread is not None else "stopped"
        return f"<FaultyUpstream {where} {running} open_connections={self.open_connections}>"

    # -- scripting -----------------------------------------------------------

    def route(self, path: str, *faults: Fault) -> None:
        """Script ``path``: successive requests consume ``faults`` in order and the
        last one repeats forever. With no faults the path answers healthy ``200``.

        ``path`` is matched exactly against the request path without its query.
        Routing again replaces the script and starts it from the beginning.
        """
        if not path.startswith("/") or "?" in path:
            raise ValueError(f"route path must start with '/' and have no query, got {path!r}")
        _check_faults(faults)
        script = _Script(faults)
        with self._state:
            self._routes[path] = script

    def set_default(self, *faults: Fault) -> None:
        """Script every path without a route (initially: healthy ``200``).

        The default script has a single cursor shared by all unrouted paths:
        ``set_default(Fault.error(503), Fault.ok())`` fails the first unrouted
        request, whatever its path, and serves the rest.
        """
        _check_faults(faults)
        script = _Script(faults)
        with self._state:
            self._default = script

    # -- inspection ----------------------------------------------------------

    def requests(
        self, path: str | None = None, *, idempotency_key: str | None = None
    ) -> list[RecordedRequest]:
        """Recorded requests in arrival order, optionally only those for ``path``
        (without query) and/or carrying ``idempotency_key``."""
        with self._state:
            log = list(self._log)
        return [
            r
            for r in log
            if (path is None or r.path == path)
            and (idempotency_key is None or r.idempotency_key == idempotency_key)
        ]

    def count(self, path: str | None = None, *, idempotency_key: str | None = None) -> int:
        """How many requests :meth:`requests` would return for the same filters."""
        return len(self.requests(path, idempotency_key=idempotency_key))

    def clear(self) -> None:
        """Forget recorded requests and restart every path's ``n`` from 1.

        Routes and their positions are kept; call :meth:`route` again to replay
        a script from its start.
        """
        with self._state:
            self._log.clear()
            self._seen.clear()

    def reset(self) -> None:
        """Back to a fresh server: :meth:`clear`, drop all routes and make the
        default script healthy again."""
        with self._state:
            self._log.clear()
            self._seen.clear()
            self._routes.clear()
            self._default = _Script(())

    @property
    def open_connections(self) -> int:
        """Client connections currently open on the server side.

        A connection counts until the server has seen the client close it (or
        closed it itself), which happens a moment after the client's close: use
        :meth:`wait_for_open_connections` rather than asserting right away.
        """
        with self._state:
            return self._open

    def wait_for_open_connections(self, expected: int = 0, *, timeout: float = 2.0) -> bool:
        """Block until :attr:`open_connections` equals ``expected``; ``False`` on timeout.

        This blocks the calling thread; from async code call it after the client
        has closed, or through ``anyio.to_thread.run_sync``.
        """
        with self._state:
            return self._state.wait_for(lambda: self._open == expected, timeout)

    # -- helpers for connection-level faults ---------------------------------

    @staticmethod
    def refused_port(host: str = "127.0.0.1") -> int:
        """A port on ``host`` where nothing listens, so connecting is refused.

        The port was free a moment ago; another process could take it, which on
        loopback in a test run practically never happens.
        """
        family, address = _family_and_address(host, 0)
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind(address)
            return int(sock.getsockname()[1])

    @staticmethod
    @contextlib.contextmanager
    def unaccepted_listener(host: str = "127.0.0.1") -> Iterator[int]:
        """Yield a port whose listener never accepts and whose backlog is full.

        New connections to it hang in the TCP handshake, so a client's *connect*
        timeout fires (a "blackhole at connect"). Relies on the kernel dropping
        SYNs to a full accept queue, which is Linux's behaviour; other systems
        may refuse instead. Everything is closed on exit.
        """
        family, address = _family_and_address(host, 0)
        listener = socket.socket(family, socket.SOCK_STREAM)
        fillers: list[socket.socket] = []
        try:
            listener.bind(address)
            listener.listen(0)
            target = listener.getsockname()[:2]
            # Connect until one handshake stalls: the accept queue is then full.
            for _ in range(64):
                probe = socket.socket(family, socket.SOCK_STREAM)
                fillers.append(probe)  # closed in `finally` whatever happens
                probe.setblocking(False)
                probe.connect_ex(target)
                _, writable, _ = select.select([], [probe], [], 0.05)
                if not writable:
                    break
            yield int(target[1])
        finally:
            for s in fillers:
                s.close()
            listener.close()

    # -- server thread -------------------------------------------------------

    def _run(self, listener: socket.socket, ready: threading.Event) -> None:
        try:
            # A selector loop everywhere: the server waits on socket readiness
            # (add_reader), which Windows' default proactor loop lacks.
            with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
                runner.run(self._serve(listener, ready))
        except BaseException as exc:
            self._crash = exc
            if ready.is_set():  # pragma: no cover - a bug in the server loop
                _log.exception("FaultyUpstream server thread crashed")
        finally:
            listener.close()
            ready.set()

    async def _serve(self, listener: socket.socket, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()
        # Accept in a reader callback, not in a task awaiting sock_accept: a
        # task cancelled just as its accept completed would drop the accepted
        # socket unclosed (a ResourceWarning in whoever's process this is).
        listener.setblocking(False)
        fd = listener.fileno()
        self._loop.add_reader(fd, self._accept_ready, listener, tasks)
        ready.set()
        try:
            await self._stop_event.wait()
        finally:
            self._loop.remove_reader(fd)
            listener.close()
            # Cancel every connection, blackholed ones included; each task's done
            # callback closes its socket even if the task never got to run.
            while tasks:
                pending = list(tasks)
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)
            self._loop = None

    def _accept_ready(self, listener: socket.socket, tasks: set[asyncio.Task[None]]) -> None:
        """Accept every pending connection (called when the listener is readable)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError:  # pragma: no cover - e.g. out of file descriptors
                _log.exception("FaultyUpstream accept failed")
                return
            sock.setblocking(False)
            # Explicitly, whatever the platform default: without it each small
            # response can wait ~40 ms for the client's delayed ACK.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._state:
                self._open += 1
                self._state.notify_all()
            task = loop.create_task(self._connection(sock))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(functools.partial(self._closed, sock))

    def _closed(self, sock: socket.socket, _task: asyncio.Task[None]) -> None:
        sock.close()
        with self._state:
            self._open -= 1
            self._state.notify_all()

    async def _connection(self, sock: socket.socket) -> None:
        """Serve requests on one connection until either side closes it."""
        loop = asyncio.get_running_loop()
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._read_request(sock, conn)
                if request is None:
                    return
                method, target, headers, body, at = request
                fault, n = self._record(method, target, headers, body, at)
                if not await self._respond(sock, conn, method, target, fault, n):
                    return
                conn.start_next_cycle()
        except _Disconnected:
            return
        except h11.RemoteProtocolError as exc:
            # A malformed request: answer 400 like a real server would, if we can.
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(OSError, h11.LocalProtocolError):
                    response = h11.Response(
                        status_code=exc.error_status_hint,
                        headers=[(b"content-length", b"0"), (b"connection", b"close")],
                    )
                    await loop.sock_sendall(
                        sock, _send(conn, response) + _send(conn, h11.EndOfMessage())
                    )
        except OSError:
            return
        except Exception:  # pragma: no cover - a bug here must not kill the server
            _log.exception("FaultyUpstream connection handler failed")

    async def _next_event(
        self, sock: socket.socket, conn: h11.Connection
    ) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                # mypy cannot narrow h11's sentinel classes with `is`.
                return cast("h11.Event | type[h11.PAUSED]", event)
            data = await _recv(sock)
            if not data and conn.their_state is not h11.IDLE:
                # Closed mid-request: nobody is left to send a 400 to.
                raise _Disconnected
            conn.receive_data(data)

    async def _read_request(
        self, sock: socket.socket, conn: h11.Connection
    ) -> tuple[str, str, tuple[tuple[str, str], ...], bytes, float] | None:
        event = await self._next_event(sock, conn)
        if not isinstance(event, h11.Request):
            return None  # ConnectionClosed between requests
        at = time.monotonic()
        if conn.they_are_waiting_for_100_continue:
            informational = h11.InformationalResponse(
                status_code=100, headers=[], reason=b"Continue"
            )
            await asyncio.get_running_loop().sock_sendall(sock, _send(conn, informational))
        chunks: list[bytes] = []
        while True:
            part = await self._next_event(sock, conn)
            if isinstance(part, h11.Data):
                chunks.append(bytes(part.data))
            elif isinstance(part, h11.EndOfMessage):
                break
            else:  # pragma: no cover - h11 raises before this can happen
                raise _Disconnected
        headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers)
        return (
            event.method.decode("latin-1"),
            event.target.decode("latin-1"),
            headers,
            b"".join(chunks),
            at,
        )

    def _record(
        self,
        method: str,
        target: str,
        headers: tuple[tuple[str, str], ...],
        body: bytes,
        at: float,
    ) -> tuple[Fault, int]:
        path = target.partition("?")[0]
        keys = [v for k, v in headers if k == "idempotency-key"]
        recorded = RecordedRequest(
            method=method,
            path=path,
            target=target,
            headers=headers,
            body=body,
            idempotency_key=", ".join(keys) if keys else None,
            at=at,
        )
        with self._state:
            self._log.append(recorded)
            n = self._seen[path] = self._seen.get(path, 0) + 1
            fault = self._script_for(method, path).next()
        return self._answer(recorded, fault, n), n

    # -- hooks for servers built on this one (seawall.testing.PaymentProvider) --

    def _script_for(self, method: str, path: str) -> _Script:
        """The script a request consumes; called with the state lock held."""
        return self._routes.get(path, self._default)

    def _answer(self, request: RecordedRequest, fault: Fault, n: int) -> Fault:
        """The fault to answer *request* with, given the one its script chose.

        Called on the server thread, without the state lock, before any of the
        fault's delays: a subclass acts on the request here (at receipt) and
        returns the answer, e.g. the fault with a body of its own.
        """
        return fault

    async def _respond(
        self,
        sock: socket.socket,
        conn: h11.Connection,
        method: str,
        target: str,
        fault: Fault,
        n: int,
    ) -> bool:
        """Answer one request as ``fault`` says; ``True`` to keep the connection."""
        loop = asyncio.get_running_loop()
        if fault.delay:
            await _pause(sock, conn, fault.delay)
        if fault.reset:
            # Linger on with a zero timeout turns the close into an RST.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if fault.blackhole:
            await _hold(sock)
            return False
        if fault.invalid:
            await loop.sock_sendall(sock, _GARBAGE)
            return False

        body = fault.body if fault.body is not None else _default_body(target.partition("?")[0], n)
        headers: list[tuple[bytes, bytes]] = []
        names = {k.lower() for k in fault.headers}
        if fault.body is None and "content-type" not in names:
            headers.append((b"content-type", b"application/json"))
        headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in fault.headers.items())
        if fault.status not in _NO_BODY_STATUSES:
            # For HEAD too: it announces the length a GET would get.
            headers.append((b"content-length", str(len(body)).encode()))
        if method == "HEAD" or fault.status in _NO_BODY_STATUSES:
            body = b""
        head = _send(
            conn,
            h11.Response(status_code=fault.status, headers=headers, reason=_reason(fault.status)),
        )
        first, rest = body[: len(body) // 2], body[len(body) // 2 :]

        if fault.truncate:
            # Raw bytes past h11: it would (rightly) refuse to send a short body.
            await loop.sock_sendall(sock, head + first)
            if fault.body_delay:
                await _pause(sock, conn, fault.body_delay)
            return False
        if fault.body_delay:
            await loop.sock_sendall(
                sock, head + (_send(conn, h11.Data(data=first)) if first else b"")
            )
            await _pause(sock, conn, fault.body_delay)
            head = b""
            body = rest
        out = head + (_send(conn, h11.Data(data=body)) if body else b"")
        await loop.sock_sendall(sock, out + _send(conn, h11.EndOfMessage()))
        return conn.our_state is h11.DONE
