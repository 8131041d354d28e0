"""The HTTP pieces the transport front end is made of: what a library is,
how an attempt's failure is classified, endpoints, and streamed answers.

Everything that names httpx's classes goes through a :class:`Flavor`, so one
front end serves httpx and httpx2 (same API under another module name).
"""

from __future__ import annotations

import base64
import weakref
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import Any

from ._breaker import Breaker
from ._compat import expire_connection, replayable
from ._decision import Route
from ._report import Outcome, RetryReason

__all__ = [
    "IDEMPOTENT_METHODS",
    "apply_timeouts",
    "copy_request",
    "honour_keep_alive",
    "phase_timeouts",
    "retarget",
    "Endpoint",
    "Flavor",
    "SendProgress",
    "idempotency_key_of",
    "origin_of",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


def origin_of(url: Any) -> str:
    """``scheme://host:port`` of a URL, with the default port made explicit."""
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"{url.scheme}://{url.host}:{port}"


def idempotency_key_of(headers: Any, names: tuple[str, ...]) -> str | None:
    """The request's idempotency key: the first of *names* with a non-blank value.

    An empty or whitespace-only value is no key: it must not make a POST retryable.
    """
    for name in names:
        value = headers.get(name)
        if value is not None and value.strip():
            return str(value)
    return None


class Flavor:
    """One HTTP library (httpx or httpx2): its classes, as the front end needs them."""

    def __init__(self, x: ModuleType, attempt_timeout: Any) -> None:
        self.x = x
        self.attempt_timeout: Any = attempt_timeout
        # The request itself is wrong (a scheme the library cannot send, a
        # header it refuses): nothing left, a retry cannot help, the upstream
        # is not to blame.
        self.our_mistake: tuple[type[Exception], ...] = (
            x.UnsupportedProtocol,
            x.LocalProtocolError,
            x.InvalidURL,
        )
        # A pooled connection the server had already closed fails like this
        # when it is reused: EOF or a reset before any byte of the answer.
        self.stale_errors: tuple[type[Exception], ...] = (
            x.RemoteProtocolError,
            x.ReadError,
            x.WriteError,
        )
        # Checked in order: the first match decides (outcome, retry reason, sent).
        self._table: tuple[tuple[type[Exception], str, str, bool], ...] = (
            (attempt_timeout, Outcome.TIMEOUT, RetryReason.ATTEMPT_TIMEOUT, True),
            (x.ConnectTimeout, Outcome.TIMEOUT, RetryReason.CONNECT_TIMEOUT, False),
            (x.PoolTimeout, Outcome.TIMEOUT, RetryReason.POOL_TIMEOUT, False),
            (x.ConnectError, Outcome.CONNECT_ERROR, RetryReason.CONNECT_ERROR, False),
            (x.ReadTimeout, Outcome.TIMEOUT, RetryReason.READ_TIMEOUT, True),
            (x.WriteTimeout, Outcome.TIMEOUT, RetryReason.WRITE_TIMEOUT, True),
            (x.TransportError, Outcome.TRANSPORT_ERROR, RetryReason.TRANSPORT_ERROR, True),
        )

    def classify(self, exc: BaseException) -> tuple[str, str, bool]:
        """(outcome, retry reason, sent) for an error raised by an attempt."""
        if isinstance(exc, self.our_mistake):
            return Outcome.ERROR, type(exc).__name__, False
        for cls, outcome, reason, sent in self._table:
            if isinstance(exc, cls):
                return outcome, reason, sent
        return Outcome.ERROR, type(exc).__name__, True

    def unread(self, response: Any, request: Any) -> Any:
        """A fresh copy of an already-read response, for the client to read like any other.

        httpx times a response (``elapsed``) when it closes the body stream
        while reading it; a response built with ``content=`` was read and
        closed on construction, so the client would never set its ``elapsed``.
        """
        x = self.x
        if not response.is_closed:
            return response  # a stream nobody read yet: the client reads it as usual
        try:
            body = response.content
        except x.ResponseNotRead:
            return response
        # ``content`` is decoded already: the copy must not be decoded again.
        headers = [(k, v) for k, v in response.headers.raw if k.lower() != b"content-encoding"]
        return x.Response(
            response.status_code,
            headers=headers,
            stream=x.ByteStream(body),
            extensions=dict(response.extensions),
            request=request,
        )

    def adopt(self, response: Any, request: Any) -> Any:
        """*response* as this library's Response (the fallback cache builds httpx ones)."""
        x = self.x
        if isinstance(response, x.Response):
            return response
        body = b"".join(response.stream)  # an unread in-memory ByteStream
        return x.Response(
            response.status_code,
            headers=response.headers.raw,
            stream=x.ByteStream(body),
            extensions=dict(response.extensions),
            request=request,
        )

    async def buffered(self, response: Any) -> Any:
        """The response with its body read now (inside the attempt, under its timeout).

        The same response object, its network stream read and closed (the
        connection goes back to the pool) and replaced by the bytes: the client
        then reads and decodes it as any other (and sets ``elapsed``).
        """
        stream = response.stream
        try:
            body = b"".join([chunk async for chunk in stream])
        finally:
            await stream.aclose()
        response.stream = self.x.ByteStream(body)
        response.extensions["seawall.body"] = body
        return response

    def held(self, response: Any, release: Callable[[], None]) -> None:
        """Make a streamed response hold its bulkhead slot until it is closed or collected."""
        response.stream = _held_stream(response.stream, release, self.x.AsyncByteStream)


def _held_stream(inner: Any, release: Callable[[], None], base: type) -> Any:
    """A response stream that gives its bulkhead slot back when closed (or collected)."""
    cls = _held_classes.get(base)
    if cls is None:
        cls = _held_classes[base] = type("HeldStream", (_Held, base), {})
    return cls(inner, release)


class _Held:
    _inner: Any
    _done: Any

    def __init__(self, inner: Any, release: Callable[[], None]) -> None:
        self._inner = inner
        # Runs once: at aclose(), or when the response is garbage-collected unclosed.
        self._done = weakref.finalize(self, release)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._done()


_held_classes: dict[type, type] = {}


class SendProgress:
    """An httpcore ``trace`` hook that notes whether the request began to go out.

    When the attempt timeout or the deadline cuts an attempt, this tells a
    request still waiting for a pool connection or a TCP handshake (never
    sent: safe to retry, no outcome unknown) from one that was sent. The
    caller's own ``trace`` hook, if any, still sees every event.
    """

    __slots__ = ("_theirs", "answered", "fresh", "sent")

    def __init__(self, theirs: Any) -> None:
        self._theirs = theirs
        self.sent = False
        #: The attempt opened a new connection (else it reused a pooled one).
        self.fresh = False
        #: The response's headers arrived.
        self.answered = False

    async def __call__(self, name: str, info: dict[str, Any]) -> None:
        if name.endswith(".send_request_headers.started"):
            self.sent = True
        elif name.endswith(".receive_response_headers.complete"):
            self.answered = True
        elif (
            name == "connection.connect_tcp.started"
            or name == "connection.connect_unix_socket.started"
        ):
            self.fresh = True
        if self._theirs is not None:
            await self._theirs(name, info)

    def stale(self) -> bool:
        """The attempt reused a pooled connection that broke before any byte of an answer."""
        return self.sent and not self.fresh and not self.answered


class Endpoint(Route):
    """One redundant provider: its base URL, its breaker, and how URLs match it."""

    __slots__ = ("host", "path", "port", "raw_path", "scheme")

    def __init__(self, x: ModuleType, url: str, breaker: Breaker | None) -> None:
        super().__init__(breaker, None)
        self.prefix = url.rstrip("/")
        self.url = x.URL(self.prefix)
        self.origin = origin_of(self.url)
        self.scheme = self.url.scheme
        self.host = self.url.host
        self.port = self.url.port or (443 if self.scheme == "https" else 80)
        self.path = self.url.path.rstrip("/")
        self.raw_path = self.url.raw_path.split(b"?")[0].rstrip(b"/")

    def matches(self, url: Any) -> bool:
        """Same scheme, host and port, and the path under ours at a segment boundary."""
        if url.scheme != self.scheme or url.host != self.host:
            return False
        if (url.port or (443 if url.scheme == "https" else 80)) != self.port:
            return False
        path = url.path
        return not self.path or path == self.path or path.startswith(self.path + "/")

    def rebase(self, url: Any, source: Endpoint) -> Any:
        """*url* (under *source*) moved under this endpoint: path tail and query kept."""
        tail = url.raw_path[len(source.raw_path) :]
        return self.url.copy_with(raw_path=self.raw_path + tail)


#: How far past the deadline httpx's own phase timeouts are capped (seconds).
_DEADLINE_MARGIN = 0.05


def phase_timeouts(
    policy: dict[str, float | None], requested: dict[str, Any] | None
) -> dict[str, float | None]:
    """httpx's per-phase timeouts: the policy's, or the request's where it is shorter."""
    if not requested:
        return policy
    merged: dict[str, float | None] = {}
    for phase, ours in policy.items():
        theirs = requested.get(phase)
        merged[phase] = theirs if ours is None or (theirs is not None and theirs < ours) else ours
    return merged


def apply_timeouts(request: Any, base: dict[str, Any], left: float | None) -> None:
    """Cap httpx's per-phase timeouts by the policy and by the time left.

    Capped a little past the time left: the engine's cut at the deadline
    must be the one that fires (a DeadlineExceededError, not whichever
    phase timeout raced it), and a phase never outlives the call.
    """
    if left is None:
        request.extensions["timeout"] = base
        return
    cap = max(left, 0.0) + _DEADLINE_MARGIN
    timeouts = {}
    for phase in ("connect", "read", "write", "pool"):
        value = base.get(phase)
        if value is None or value > cap:
            value = cap
        timeouts[phase] = value
    request.extensions["timeout"] = timeouts


def honour_keep_alive(inner: Any, value: str, response: Any) -> None:
    """Expire the connection before the server's ``Keep-Alive: timeout=N`` does."""
    for part in value.split(","):
        name, _, number = part.strip().partition("=")
        if name.strip().lower() == "timeout" and number.strip().isdigit():
            stream = response.extensions.get("network_stream")
            if stream is not None:
                # A margin: the server's clock started when it sent the answer.
                seconds = max(0.0, int(number) - 0.5)
                expire_connection(inner, stream, seconds)
            return


def copy_request(x: ModuleType, request: Any) -> Any:
    """A twin of *request* for a hedge in flight beside it (same body, own state)."""
    return x.Request(
        request.method,
        request.url,
        headers=request.headers.copy(),
        content=request.content,
        extensions=dict(request.extensions),
    )


def retarget(x: ModuleType, source: Endpoint, request: Any, endpoint: Endpoint) -> Any:
    """*request* (under *source*) sent to *endpoint*: with that endpoint's credentials,
    never another's."""
    if source is endpoint:
        return request
    url = endpoint.rebase(request.url, source)
    headers = request.headers.copy()
    headers["Host"] = endpoint.url.netloc.decode("ascii")
    if source.origin != endpoint.origin or source.url.userinfo != endpoint.url.userinfo:
        # As httpx does on a cross-origin redirect: credentials stay with
        # the provider they were meant for.
        headers.pop("Authorization", None)
        if endpoint.url.userinfo:
            credentials = f"{endpoint.url.username}:{endpoint.url.password}"
            headers["Authorization"] = "Basic " + base64.b64encode(
                credentials.encode("utf-8")
            ).decode("ascii")
    return x.Request(
        request.method,
        url.copy_with(username=None, password=None),
        headers=headers,
        content=request.content if replayable(request) else None,
        stream=None if replayable(request) else request.stream,
        extensions=dict(request.extensions),
    )
