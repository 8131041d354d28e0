"""ASGI integration: deadlines in, fail-fast errors out, load shedding, a status app.

:class:`ResilienceMiddleware` is pure ASGI (not Starlette's BaseHTTPMiddleware,
which breaks contextvar propagation: both our deadline and OpenTelemetry's
context live in contextvars). Non-HTTP scopes (websockets, lifespan) pass
straight through; streaming responses are untouched.
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import httpx

from ._deadline import deadline as _deadline_cm
from ._deadline import forward_header
from ._exceptions import (
    BulkheadFullError,
    CircuitOpenError,
    DeadlineExceededError,
    OutcomeUnknownError,
    RateLimitedError,
)
from ._registry import Registry

__all__ = ["ResilienceMiddleware", "problem_for", "status_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_TITLES = {
    "circuit_open": "Dependency unavailable (circuit open)",
    "bulkhead_full": "Dependency saturated (bulkhead full)",
    "rate_limited": "Dependency rate limit reached",
    "deadline_exceeded": "Deadline exceeded",
    "timeout": "Dependency timed out",
    "outcome_unknown": "Outcome of a dependency call unknown",
    "overloaded": "Service overloaded",
}


def _retry_after(seconds: float | None) -> str:
    # Never tell a client to come back sooner than we know is useful; whole seconds.
    return str(max(1, math.ceil(seconds))) if seconds is not None else "1"


def problem_for(
    exc: BaseException, *, rate_limited_status: int = 503
) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
    """The RFC 9457 ``application/problem+json`` answer for a seawall error, or None.

    CircuitOpenError and BulkheadFullError: 503 with Retry-After;
    RateLimitedError: 503 (or ``rate_limited_status``) with Retry-After;
    DeadlineExceededError and timeouts: 504; OutcomeUnknownError: 502. Other
    errors get None (they pass through). The body names the dependency and the
    reason, and nothing else: no URL, header or traceback leaks out.

    A handler that fans out in a task group gets its dependency's error back
    wrapped in an exception group. A group is answered only if every error in
    it (nested groups included) is one seawall answers, and the first one
    answers. A group that holds anything else (a ``KeyError`` beside a
    ``CircuitOpenError``, say) is a bug as well as an outage: None, so it
    propagates, the framework answers 500 and the server logs it.
    """
    if isinstance(exc, BaseExceptionGroup):
        first = None
        for leaf in exc.exceptions:
            answer = problem_for(leaf, rate_limited_status=rate_limited_status)
            if answer is None:
                return None
            first = first or answer
        return first
    headers: list[tuple[bytes, bytes]] = []
    dependency = getattr(exc, "dependency", None)
    if isinstance(exc, CircuitOpenError | BulkheadFullError):
        status = 503
        headers.append((b"retry-after", _retry_after(exc.retry_after).encode()))
        reason = exc.reason
    elif isinstance(exc, RateLimitedError):
        status = rate_limited_status
        headers.append((b"retry-after", _retry_after(exc.retry_after).encode()))
        reason = exc.reason
    elif isinstance(exc, OutcomeUnknownError):
        status, reason = 502, exc.reason
    elif isinstance(exc, DeadlineExceededError):
        status, reason = 504, exc.reason
    elif isinstance(exc, httpx.TimeoutException | TimeoutError):
        status, reason = 504, "timeout"
        if dependency is None:
            from ._report import report_of

            report = report_of(exc)
            dependency = report.dependency if report is not None else None
        if dependency is None:
            return None  # a timeout that is not a seawall call's: not ours to answer
    else:
        return None
    problem: dict[str, Any] = {
        "type": f"urn:seawall:problem:{reason}",
        "title": _TITLES.get(reason, reason),
        "status": status,
        "detail": f"A call to the {dependency!s} dependency failed: {reason.replace('_', ' ')}."
        if dependency
        else f"{reason.replace('_', ' ')}.",
        "dependency": dependency,
        "reason": reason,
    }
    body = json.dumps(problem).encode()
    headers += [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
    ]
    return status, headers, body


async def _send_problem(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _parse_deadline(value: bytes) -> float | None:
    """Seconds from a deadline header: ``2.5`` (seconds), ``2500ms`` or ``2.5s``."""
    text = value.decode("latin-1").strip().lower()
    scale = 1.0
    if text.endswith("ms"):
        text, scale = text[:-2], 0.001
    elif text.endswith("s"):
        text = text[:-1]
    try:
        seconds = float(text) * scale
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


#: The default floor of an inbound deadline, in seconds (``min_deadline``).
_DEFAULT_MIN_DEADLINE = 0.1


def _check_seconds(name: str, value: object, *, zero: bool) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not (value >= 0 if zero else value > 0)
    ):
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"ResilienceMiddleware.{name}: must be {bound} or None, got {value!r}")


class _HeldSend:
    """The ``send`` of one request: holds back a complete 500 until the app is done.

    Starlette's ServerErrorMiddleware, outermost in every Starlette and FastAPI
    app, answers an unhandled error with a 500 and then re-raises it. Around
    such an app, the error reaches this middleware after that 500 was sent.
    Holding a 500 back until the app returns or raises lets a seawall error
    still be answered with its problem response, and the 500 go out otherwise.
    Only a 500 whose body is complete is held: a streamed one goes out at once.
    """

    __slots__ = ("_send", "held", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.held: list[Message] = []
        self.started = False  # a response start went out: nothing can be changed

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if self.held:
            self.held.append(message)
            if kind != "http.response.body" or message.get("more_body", False):
                await self.flush()
            return
        if kind == "http.response.start":
            if message.get("status") == 500:
                self.held.append(message)
                return
            self.started = True
        await self._send(message)

    async def flush(self) -> None:
        held, self.held = self.held, []
        for message in held:
            if message["type"] == "http.response.start":
                self.started = True
            await self._send(message)


class ResilienceMiddleware:
    """Pure ASGI middleware: request deadlines, fail-fast error mapping, load shedding.

    * Deadline propagation: each request gets a deadline, ``deadline`` seconds
      (None: none) or the smaller one in the inbound ``deadline_header``; every
      seawall call made while handling it caps its total timeout by what
      remains, and dependencies with ``Policy(forward_deadline=True)`` forward
      the remaining budget downstream in the same header.
    * ``min_deadline``: an inbound deadline shorter than this (0.1 s by
      default) is raised to it. The header is the caller's to set, and no
      dependency answers in a millisecond: honoured as sent, a tiny deadline
      only manufactures timeouts. ``None`` or ``0`` honours any deadline.
    * A seawall error escaping the app becomes an RFC 9457 problem response
      (see :func:`problem_for`), if the response has not started; otherwise it
      is re-raised. Around a whole Starlette or FastAPI app, whose outermost
      layer answers 500 before re-raising, that 500 is held back until the app
      is done, so the problem response replaces it.
    * ``max_concurrent_requests`` caps the requests in flight in the app; the
      next one gets 503 with Retry-After at once, without running the handler.

    ``registry`` is optional, and read by nothing here: the errors carry
    their dependency's name. It is accepted so that integrations and apps
    can pass the registry they serve, and kept as the ``registry`` attribute.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: Registry | None = None,
        deadline: float | None = None,
        deadline_header: str = "Request-Timeout",
        min_deadline: float | None = _DEFAULT_MIN_DEADLINE,
        max_concurrent_requests: int | None = None,
        rate_limited_status: int = 503,
    ) -> None:
        _check_seconds("deadline", deadline, zero=False)
        _check_seconds("min_deadline", min_deadline, zero=True)
        if max_concurrent_requests is not None and (
            isinstance(max_concurrent_requests, bool)
            or not isinstance(max_concurrent_requests, int)
            or max_concurrent_requests < 1
        ):
            raise ValueError(
                "ResilienceMiddleware.max_concurrent_requests: must be an integer >= 1 or None, "
                f"got {max_concurrent_requests!r}"
            )
        if rate_limited_status not in (429, 503):
            raise ValueError(
                f"ResilienceMiddleware.rate_limited_status: must be 429 or 503, got {rate_limited_status!r}"
            )
        self.app = app
        self.registry = registry
        self.deadline = deadline
        self.deadline_header = deadline_header
        self._header_key = deadline_header.lower().encode("latin-1")
        self.min_deadline = min_deadline
        self.max_concurrent_requests = max_concurrent_requests
        self.rate_limited_status = rate_limited_status
        self._in_flight = 0
        self._shed_body = json.dumps(
            {
                "type": "urn:seawall:problem:overloaded",
                "title": _TITLES["overloaded"],
                "status": 503,
                "detail": "Too many requests in flight; try again shortly.",
                "reason": "overloaded",
            }
        ).encode()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _deadline_of(self, scope: Scope) -> float | None:
        """This request's budget: ours, or the inbound one (raised to the floor) if shorter."""
        seconds = self.deadline
        for name, value in scope.get("headers", ()):
            if name == self._header_key:
                inbound = _parse_deadline(value)
                if inbound is not None:
                    inbound = max(inbound, self.min_deadline or 0.0)
                    if seconds is None or inbound < seconds:
                        seconds = inbound
                break
        return seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_concurrent_requests
        if limit is not None and self._in_flight >= limit:
            body = self._shed_body
            await _send_problem(
                send,
                503,
                [
                    (b"retry-after", b"1"),
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                ],
                body,
            )
            return
        seconds = self._deadline_of(scope)
        response = _HeldSend(send)
        self._in_flight += 1
        token = forward_header.set(self.deadline_header)
        try:
            if seconds is None:
                await self.app(scope, receive, response)
            else:
                with _deadline_cm(seconds):
                    await self.app(scope, receive, response)
        except Exception as exc:
            problem = problem_for(exc, rate_limited_status=self.rate_limited_status)
            if problem is None or response.started:
                await response.flush()  # the app's own answer to the error, if it made one
                raise
            await _send_problem(send, *problem)
        else:
            await response.flush()
        finally:
            forward_header.reset(token)
            self._in_flight -= 1


# -- the status app ------------------------------------------------------------------

_ACTIONS = {
    "force-open": "force_open",
    "force-closed": "force_closed",
    "disable": "disable",
    "reset": "reset",
}


def _bearer_token(value: bytes) -> bytes:
    """The token of an ``Authorization: Bearer <token>`` value, or b"".

    The scheme is case-insensitive (RFC 9110, section 11.1): ``bearer`` and
    ``BEARER`` are ``Bearer``.
    """
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return b""
    return token.strip(b" \t")


def _breaker_action(
    registry: Registry, name: str, breakers: dict[str, Any], action: str, scope: Scope
) -> tuple[int, object]:
    """Apply *action* to *name*'s breakers: here, or (``?scope=cluster``) on every replica."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    unknown = sorted(set(query) - {"scope", "ttl"})
    if unknown:
        return 400, {"error": f"unknown query parameter {unknown[0]!r}"}
    where = query.get("scope", ["local"])[-1]
    if where not in ("local", "cluster"):
        return 400, {"error": f"scope: must be 'local' or 'cluster', got {where!r}"}
    ttl: float | None = None
    if "ttl" in query:
        raw = query["ttl"][-1]
        try:
            ttl = float(raw)
        except ValueError:
            ttl = math.nan
        if where != "cluster" or not math.isfinite(ttl) or not 0 < ttl <= 1e9:
            return 400, {
                "error": f"ttl: must be a positive number of seconds, with scope=cluster, "
                f"got {raw!r}"
            }
    if where == "local":
        for breaker in breakers.values():
            getattr(breaker, action)()
        return 200, registry.dependency_snapshot(name)
    from ._shared._breaker import AdvisoryBreaker

    if not all(isinstance(b, AdvisoryBreaker) for b in breakers.values()):
        return 409, {
            "error": f"dependency {name!r} does not share its breaker: scope=cluster "
            "needs Shared(breaker='advisory') and a state backend"
        }
    for breaker in breakers.values():
        getattr(breaker, action)(scope="cluster", ttl=ttl)
    return 200, registry.dependency_snapshot(name)


def status_app(registry: Registry, *, admin_token: str | None = None) -> ASGIApp:
    """A small ASGI app serving the registry's snapshot; mount it anywhere.

    ``GET /`` answers the snapshot as JSON (like Spring's actuator
    circuit-breaker endpoint). With ``admin_token`` set, and only then,
    ``POST /{dependency}/breaker/{action}`` (``force-open``, ``force-closed``,
    ``disable``, ``reset``) changes that dependency's breakers and answers
    with its snapshot entry; a missing or wrong bearer token gets 401 (checked
    first, in constant time), an unknown dependency or action 404. The scheme
    is case-insensitive (``bearer`` works); the token is compared exactly.

    ``?scope=cluster`` (optionally ``&ttl=SECONDS``) applies the action on
    every replica, through shared state: the dependency needs
    ``Shared(breaker="advisory")`` (409 otherwise). A bad query answers 400
    naming the parameter and its value.
    """
    if admin_token is not None and (not isinstance(admin_token, str) or not admin_token.strip()):
        # Never echo the value: it is meant to be a secret.
        got = "a blank string" if isinstance(admin_token, str) else type(admin_token).__name__
        raise ValueError(f"status_app(admin_token): must be a non-empty string or None, got {got}")
    if admin_token is not None and admin_token != admin_token.strip():
        # A token read from a file with its newline: no header could ever carry it.
        raise ValueError("status_app(admin_token): must not start or end with whitespace")
    expected = admin_token.encode() if admin_token is not None else None

    async def respond(
        send: Send,
        status: int,
        payload: object,
        extra: tuple[tuple[bytes, bytes], ...] = (),
        *,
        head: bool = False,
    ) -> None:
        body = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if head else body})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method = scope["method"]
        root = scope.get("root_path", "")
        path = scope["path"]
        if root and path.startswith(root):
            path = path[len(root) :]
        path = path.rstrip("/") or "/"
        if method in ("GET", "HEAD"):
            if path == "/":
                await respond(send, 200, registry.snapshot(), head=method == "HEAD")
            else:
                await respond(send, 404, {"error": "not found"}, head=method == "HEAD")
            return
        if method == "POST" and expected is not None:
            token = b""
            for name, value in scope.get("headers", ()):
                if name == b"authorization":
                    token = _bearer_token(value)
                    break
            if not hmac.compare_digest(token, expected):
                await respond(
                    send,
                    401,
                    {"error": "unauthorized"},
                    ((b"www-authenticate", b'Bearer realm="seawall"'),),
                )
                return
            parts = path.strip("/").split("/")
            if len(parts) == 3 and parts[1] == "breaker" and parts[2] in _ACTIONS:
                name = parts[0]
                if name in registry:
                    breakers = registry.breakers(name)
                    if breakers:
                        status, payload = _breaker_action(
                            registry, name, breakers, _ACTIONS[parts[2]], scope
                        )
                        await respond(send, status, payload)
                        return
            await respond(send, 404, {"error": "not found"})
            return
        if method == "POST":
            await respond(send, 404, {"error": "not found"})
            return
        await respond(send, 405, {"error": "method not allowed"}, ((b"allow", b"GET, HEAD, POST"),))

    return app
