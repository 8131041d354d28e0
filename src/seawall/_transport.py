"""ResilientTransport: the HTTP front end of the call engine, as an httpx transport.

The engine (``_engine``) runs the layers in their documented order; this
module does an attempt's I/O and judges what came back. When is a retry
safe? When the request never left (connect failure, connect or pool timeout),
for any method; after it may have reached the server (read or write timeout,
reset, retryable status), only for an idempotent method or a request carrying
an idempotency key; a 429 was refused unprocessed, so it is retried for any
method. A request whose body cannot be replayed is never retried. A
non-idempotent request that was sent and got no answer raises
OutcomeUnknownError: the upstream may have acted on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import httpx

from ._clock import MONOTONIC, Clock
from ._compat import pool_connections, replayable
from ._config import Policy
from ._deadline import forward_header
from ._decision import (
    Attempt,
    Call,
    Decision,
    Route,
    mark_unsafe,
)
from ._engine import run_call
from ._exceptions import DeadlineExceededError, OutcomeUnknownError
from ._fallback import fail_call, finish_response
from ._http import (
    IDEMPOTENT_METHODS,
    Endpoint,
    Flavor,
    SendProgress,
    apply_timeouts,
    copy_request,
    honour_keep_alive,
    idempotency_key_of,
    origin_of,
    phase_timeouts,
    retarget,
)
from ._http_judge import call_report, judge_failure, judge_response, unknown_outcome
from ._report import CallReport, report_of
from ._runtime import Runtime
from .telemetry._otel import RETRY_MARKERS, log_call, note_double_retry, start_call

__all__ = ["IDEMPOTENT_METHODS", "AttemptTimeout", "ResilientTransport"]

IDEMPOTENCY_HEADER = "Idempotency-Key"


class AttemptTimeout(httpx.ReadTimeout, TimeoutError):
    """An attempt cut by ``Timeouts.attempt``.

    Both an ``httpx.ReadTimeout`` (code around an httpx SDK catches it as any
    read timeout, which is what it counts as) and a built-in ``TimeoutError``.
    """


HTTPX = Flavor(httpx, AttemptTimeout)


class HttpCall(Call):
    """One logical HTTP call: the engine's record plus what the front end needs."""

    __slots__ = (
        "base_timeouts",
        "in_flight_unsafe",
        "progress",
        "replayable",
        "request",
        "routes",
        "safe_after_send",
        "sent_unanswered",
        "source",
        "streaming",
        "their_trace",
        "unknown",
    )
    base_timeouts: dict[str, float | None]
    in_flight_unsafe: bool
    progress: SendProgress | None
    replayable: bool
    request: Any
    routes: Sequence[Route]
    safe_after_send: bool
    #: The endpoint the request's URL lies under (matched once per call).
    source: Any
    sent_unanswered: bool
    streaming: bool
    their_trace: Any
    unknown: bool


class TransportCore:
    """The HTTP front end, for any flavor of httpx: ResilientTransport's whole body.

    ``seawall.ResilientTransport`` (httpx) and ``seawall.httpx2.ResilientTransport``
    mix it into their library's ``AsyncBaseTransport``.
    """

    _flavor: Flavor = HTTPX

    def __init__(
        self,
        dependency: str,
        policy: Policy | None = None,
        *,
        transport: Any = None,
        endpoints: Sequence[str] | None = None,
        clock: Clock | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        if runtime is None:
            runtime = Runtime(
                dependency, policy or Policy(), clock or MONOTONIC, endpoints=endpoints or ()
            )
        x = self._flavor.x
        if transport is None:
            pool = runtime.policy.pool
            transport = x.AsyncHTTPTransport(
                limits=x.Limits(
                    max_connections=pool.max_connections,
                    max_keepalive_connections=pool.max_keepalive,
                    keepalive_expiry=pool.keepalive_expiry,
                )
            )
        self._inner: Any = transport
        # httpcore-backed: its trace events say when a request starts going out.
        self._traced = isinstance(transport, x.AsyncHTTPTransport)
        self._in_flight = 0
        self._closing = False
        self.adopt_runtime(runtime)

    # -- handles ---------------------------------------------------------------

    @property
    def rt(self) -> Runtime:
        return self._rt

    @property
    def flavor(self) -> Flavor:
        return self._flavor

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    @property
    def dependency(self) -> str:
        return self._rt.name

    @property
    def policy(self) -> Policy:
        return self._rt.policy

    @property
    def runtime(self) -> Runtime:
        return self._rt

    @property
    def inner(self) -> Any:
        return self._inner

    async def aclose(self) -> None:
        await self._inner.aclose()

    def pool_statistics(self) -> dict[str, Any]:
        """Figures of the connection pool: limits, connections open and idle, calls in flight."""
        stats: dict[str, Any] = {
            "max_connections": self._rt.policy.pool.max_connections,
            "max_keepalive": self._rt.policy.pool.max_keepalive,
            "in_flight": self._in_flight,
        }
        connections = pool_connections(self._inner)
        if connections is not None:
            stats["connections"] = len(connections)
            stats["idle"] = sum(1 for c in connections if c.is_idle())
        return stats

    def adopt_runtime(self, runtime: Runtime) -> None:
        """Serve later calls under a new runtime (Registry.reload); calls in flight keep theirs."""
        self._rt = runtime
        runtime.transports.add(self)
        x = self._flavor.x
        self._endpoints = tuple(
            Endpoint(x, url, runtime.endpoint_breakers.get(url)) for url in runtime.endpoints
        )
        self._own_route = (Route(runtime.breaker),)
        t = runtime.policy.timeouts
        self._policy_phases: dict[str, float | None] = {
            "connect": t.connect,
            "read": t.read,
            "write": t.write,
            "pool": t.pool,
        }
        self._key_headers: tuple[str, ...] = runtime.policy.idempotency_headers

    def retire(self) -> None:
        """Close the pool once the last call in flight ends (Registry.reload retired it)."""
        self._closing = True

    # -- a call ------------------------------------------------------------------

    async def handle_async_request(self, request: Any) -> Any:
        self._in_flight += 1
        call = self._new_call(request)
        tel = call.tel
        try:
            response: Any = await run_call(self, call)
        except BaseException as exc:
            if call.in_flight_unsafe:
                # Cut from outside after a request left that may not be resent:
                # the calls around this one must not resend it either.
                progress = call.progress
                if progress is None or progress.sent:
                    mark_unsafe()
            report = report_of(exc)
            if tel is not None:
                tel.finished(report, request.url, exc)
            elif report is not None:
                log_call(report, request.url)
            raise
        else:
            report = response.extensions.get("seawall")
            if tel is not None:
                tel.finished(report, request.url, None)
            elif report is not None:
                log_call(report, request.url)
            return response
        finally:
            self._in_flight -= 1
            if self._closing and not self._in_flight:
                # Retired by a reload: the last call in flight closes the pool.
                with anyio.CancelScope(shield=True):
                    await self._inner.aclose()

    def _new_call(self, request: Any) -> HttpCall:
        rt = self._rt
        call = HttpCall(rt.clock.now(), start_call(rt.name, request.method, self._inner))
        extensions = request.extensions
        key = extensions.get("idempotency_key")
        if key is not None and str(key).strip() and self._key_headers[0] not in request.headers:
            request.headers[self._key_headers[0]] = str(key)
        call.request = request
        headers = request.headers
        for marker in RETRY_MARKERS:
            resent = headers.get(marker)
            if resent is not None and resent != "0":
                note_double_retry(rt.name, marker, resent)
        call.safe_after_send = request.method in IDEMPOTENT_METHODS or (
            idempotency_key_of(request.headers, self._key_headers) is not None
        )
        call.replayable = replayable(request)
        # Only ResilientClient says whether the caller streams; a plain
        # AsyncClient might, so its responses are never buffered.
        call.streaming = bool(extensions.get("seawall.stream", True))
        call.their_trace = extensions.get("trace")
        call.base_timeouts = phase_timeouts(self._policy_phases, extensions.get("timeout"))
        call.progress = None
        call.in_flight_unsafe = call.sent_unanswered = call.unknown = False
        endpoints = self._endpoints
        source = None
        if endpoints:
            for ep in endpoints:
                if ep.matches(request.url):
                    source = ep
                    break
        if source is None:
            call.routes = self._own_route
            call.endpoint = origin_of(request.url)
        else:
            call.routes = endpoints
            call.next_route = endpoints.index(source)
        call.source = source
        return call

    # -- the front end's part ------------------------------------------------------

    def routes(self, call: HttpCall) -> Sequence[Route]:
        return call.routes

    def hedgeable(self, call: HttpCall) -> bool:
        # Never a keyless POST or PATCH, never a streamed request body.
        return call.safe_after_send and call.replayable

    async def send(self, call: HttpCall, attempt: Attempt, limit: float | None) -> Any:
        request = call.request
        route = attempt.route
        target = attempt.target = (
            retarget(self._flavor.x, call.source, request, route)
            if isinstance(route, Endpoint)
            else request
        )
        if attempt.hedge and target is request:
            target = attempt.target = copy_request(
                self._flavor.x, request
            )  # its own extensions and headers
        left = None
        if call.deadline_at is not None:
            left = call.deadline_at - self._rt.clock.now()
        apply_timeouts(target, call.base_timeouts, left)
        if self._rt.policy.forward_deadline and left is not None:
            target.headers[forward_header.get()] = f"{max(0.0, left):.3f}"
        if attempt.index > 1:
            target.extensions["seawall.resend_count"] = attempt.index - 1
        if not call.safe_after_send:
            call.in_flight_unsafe = True
        if self._traced:
            # Whether a cut request had left decides its fate; whether a
            # failed one had reused a pooled connection says if it was stale.
            attempt.progress = call.progress = target.extensions["trace"] = SendProgress(
                call.their_trace
            )
        tel = call.tel
        if tel is not None:
            attempt.span = tel.attempt_started(target, attempt.index - 1, attempt.hedge)
        response: Any = await self._inner.handle_async_request(target)
        if not call.streaming:
            response = await self._flavor.buffered(response)
            keep_alive = response.headers.get("keep-alive")
            if keep_alive is not None:
                honour_keep_alive(self._inner, keep_alive, response)
        call.in_flight_unsafe = False
        return response

    def settle_attempt(self, call: HttpCall, attempt: Attempt) -> None:
        if attempt.progress is not None:  # the request's own hook (if any) goes back
            if call.their_trace is None:
                attempt.target.extensions.pop("trace", None)
            else:
                attempt.target.extensions["trace"] = call.their_trace

    def cut(self, call: HttpCall, attempt: Attempt, by_deadline: bool) -> Exception:
        rt = self._rt
        if by_deadline:
            return DeadlineExceededError(
                f"deadline of {rt.name!r} ran out during attempt {attempt.index}",
                dependency=rt.name,
            )
        error: Exception = self._flavor.attempt_timeout(
            f"attempt {attempt.index} to {rt.name!r} took longer than "
            f"{rt.policy.timeouts.attempt} s",
            request=attempt.target,
        )
        return error

    def judge_result(
        self, call: HttpCall, attempt: Attempt, response: Any
    ) -> tuple[Decision, bool]:
        return judge_response(self, call, attempt, response)

    def judge_error(self, call: HttpCall, attempt: Attempt, exc: Exception) -> Decision:
        return judge_failure(self, call, attempt, exc)

    def abandon(self, call: HttpCall, attempt: Attempt) -> None:
        self.settle_attempt(call, attempt)
        if attempt.span is not None:  # cancelled: the caller's doing, or a hedge that lost
            attempt.span.set_attribute("seawall.cancelled", True)
            attempt.span.end()
            attempt.span = None

    def keep_slot(self, response: Any, held: Any) -> bool:
        if "seawall.body" in response.extensions:
            return False  # read already: the slot is free to go
        bulkhead, slot = held
        self._flavor.held(response, lambda: bulkhead.release(slot))
        return True

    async def retain(self, response: Any) -> Any:
        if "seawall.body" in response.extensions:
            return response  # buffered: the answer if nothing better comes
        # Its connection must go back now; a streamed body cannot be kept.
        await response.aclose()
        return None

    async def discard(self, response: Any) -> None:
        await response.aclose()

    async def answer(self, call: HttpCall, response: Any, stopped: str | None) -> Any:
        answer: Any = await finish_response(self, call, response, stopped)
        return answer

    async def fail(self, call: HttpCall, error: Exception, stopped: str | None, last: Any) -> Any:
        answer: Any = await fail_call(self, call, error, stopped, last)
        return answer

    def report(self, call: HttpCall) -> CallReport:
        return call_report(self, call)

    def unknown_error(self, call: HttpCall, cause: BaseException) -> OutcomeUnknownError:
        return unknown_outcome(self, call, cause)


class ResilientTransport(TransportCore, httpx.AsyncBaseTransport):
    """An httpx transport that applies a seawall :class:`~seawall.Policy` to every request.

    It wraps an inner transport (by default an ``httpx.AsyncHTTPTransport``
    built from the policy's pool settings), so any httpx-based SDK that
    accepts an ``httpx.AsyncClient`` gets seawall's protection::

        transport = seawall.ResilientTransport("payments", policy)
        sdk = PaymentsSDK(http_client=httpx.AsyncClient(transport=transport))

    With ``endpoints`` (base URLs of redundant providers), a request whose URL
    lies under one of them (same origin, path under its path) is sent to the
    first endpoint whose breaker admits it, and each retry to the next one.

    Responses are handed over as soon as their headers arrive, unless the
    request came from :class:`~seawall.ResilientClient` without ``stream=True``
    (then the body is read inside the attempt, so the attempt timeout covers
    it and a broken body is retried where that is safe). A streamed response
    holds its bulkhead slot until it is closed. For httpx2, see
    ``seawall.httpx2.ResilientTransport``.
    """
