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

import base64
from collections.abc import Sequence
from typing import Any

import anyio
import httpx

from ._clock import MONOTONIC, Clock
from ._compat import expire_connection, pool_connections, replayable
from ._config import Policy
from ._deadline import forward_header
from ._decision import (
    ANSWER,
    NEUTRAL_ATTR,
    Attempt,
    Call,
    Decision,
    Route,
    Stop,
    mark_unsafe,
    resend,
    retry,
    stop,
)
from ._engine import run_call
from ._exceptions import DeadlineExceededError, OutcomeUnknownError, SeawallError
from ._fallback import fail_call, finish_response
from ._http import IDEMPOTENT_METHODS, Endpoint, Flavor, SendProgress, idempotency_key_of, origin_of
from ._report import CallReport, Outcome, RetryReason, report_of
from ._retry import parse_retry_after
from ._runtime import Runtime
from .telemetry._otel import RETRY_MARKERS, log_call, note_double_retry, start_call

__all__ = ["IDEMPOTENT_METHODS", "AttemptTimeout", "ResilientTransport"]

IDEMPOTENCY_HEADER = "Idempotency-Key"

#: How far past the deadline httpx's own phase timeouts are capped (seconds).
_DEADLINE_MARGIN = 0.05


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
        call.base_timeouts = self._phase_timeouts(extensions.get("timeout"))
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
            self._retarget(request, route) if isinstance(route, Endpoint) else request
        )
        if attempt.hedge and target is request:
            target = attempt.target = self._copy(request)  # its own extensions and headers
        left = None
        if call.deadline_at is not None:
            left = call.deadline_at - self._rt.clock.now()
        self._apply_timeouts(target, call.base_timeouts, left)
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
                self._honour_keep_alive(keep_alive, response)
        call.in_flight_unsafe = False
        return response

    def _settle_attempt(self, call: HttpCall, attempt: Attempt) -> None:
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
        self._settle_attempt(call, attempt)
        status = call.status_code = response.status_code
        if call.tel is not None:
            call.tel.attempt_ended(
                attempt.span,
                attempt.target,
                self._rt.clock.now() - attempt.t0,
                Outcome.SUCCESS if status < 400 else Outcome.HTTP_ERROR,
                status,
                str(status) if status >= 400 else None,
            )
            attempt.span = None
        breaker = attempt.route.breaker
        failed = breaker is not None and status in breaker.config.failure_statuses
        retry_cfg = self._rt.policy.retry
        if retry_cfg is None or status not in retry_cfg.retry_statuses:
            return ANSWER, failed
        if status != 429 and not call.safe_after_send:
            return stop(Stop.NOT_IDEMPOTENT), failed
        if not call.replayable:
            return stop(Stop.UNREPLAYABLE_BODY), failed
        wait = parse_retry_after(response.headers.get("retry-after"))
        return retry(f"status_{status}", wait), failed

    def judge_error(self, call: HttpCall, attempt: Attempt, exc: Exception) -> Decision:
        self._settle_attempt(call, attempt)
        outcome: str
        if isinstance(exc, DeadlineExceededError):
            outcome, reason, sent = Outcome.DEADLINE_EXCEEDED, "deadline", True
        else:
            outcome, reason, sent = self._flavor.classify(exc)
        progress = attempt.progress
        if progress is not None and not progress.sent:
            sent = False  # cut while waiting for a connection: it never left
        call.in_flight_unsafe = False
        if call.tel is not None:
            call.tel.attempt_ended(
                attempt.span,
                attempt.target,
                self._rt.clock.now() - attempt.t0,
                outcome,
                None,
                type(exc).__qualname__,
            )
            attempt.span = None
        if outcome == Outcome.ERROR:
            if isinstance(exc, self._flavor.our_mistake):
                setattr(exc, NEUTRAL_ATTR, True)  # says nothing of the upstream's health
            return stop(Stop.NOT_RETRYABLE)
        if sent:
            call.sent_unanswered = True
            if not call.safe_after_send:
                call.unknown = True
                return stop(Stop.NOT_IDEMPOTENT)
            if (
                progress is not None
                and progress.stale()
                and isinstance(exc, self._flavor.stale_errors)
                and call.replayable
            ):
                # The server had closed the pooled connection as it was
                # reused: the dependency is not to blame, the request never
                # reached an application. Resend at once (RFC 9110, 9.2.2:
                # only because the request is idempotent or keyed).
                setattr(exc, NEUTRAL_ATTR, True)
                return resend(RetryReason.STALE_CONNECTION)
        if isinstance(exc, SeawallError):
            return stop(Stop.NOT_RETRYABLE)
        if not call.replayable:
            return stop(Stop.UNREPLAYABLE_BODY)
        return retry(reason)

    def abandon(self, call: HttpCall, attempt: Attempt) -> None:
        self._settle_attempt(call, attempt)
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
        rt = self._rt
        breaker = rt.breaker
        if breaker is None:
            for ep in self._endpoints:
                if ep.origin == call.endpoint:
                    breaker = ep.breaker
        return CallReport(
            dependency=rt.name,
            outcome=call.outcome,
            attempts=call.attempts,
            retries=tuple(call.retries),
            elapsed=rt.clock.now() - call.start,
            endpoint=call.endpoint,
            method=call.request.method,
            status_code=call.status_code,
            breaker_state_before=call.breaker_before,
            breaker_state=breaker._state.value if breaker is not None else None,
            bulkhead_wait=call.bulkhead_wait,
            fallback=call.fallback,
            timeouts=rt.policy.timeouts,
            deadline_remaining=call.deadline_remaining,
            retry_stopped=call.retry_stopped,
            roles=() if call.roles is None else tuple(call.roles),
            winner=call.winner,
        )

    def unknown_error(self, call: HttpCall, cause: BaseException) -> OutcomeUnknownError:
        request = call.request
        unknown = OutcomeUnknownError(
            f"{request.method} to {self._rt.name!r} was sent but no answer came back; "
            "it may or may not have taken effect upstream (retry with the same "
            "idempotency key, or verify)",
            dependency=self._rt.name,
            request=request,
        )
        unknown.__cause__ = cause
        call.outcome = Outcome.OUTCOME_UNKNOWN
        unknown.report = self.report(call)
        return unknown

    # -- helpers -------------------------------------------------------------------

    def _phase_timeouts(self, requested: dict[str, Any] | None) -> dict[str, float | None]:
        """httpx's per-phase timeouts: the policy's, or the request's where it is shorter."""
        policy = self._policy_phases
        if not requested:
            return policy
        merged: dict[str, float | None] = {}
        for phase, ours in policy.items():
            theirs = requested.get(phase)
            merged[phase] = (
                theirs if ours is None or (theirs is not None and theirs < ours) else ours
            )
        return merged

    @staticmethod
    def _apply_timeouts(request: Any, base: dict[str, Any], left: float | None) -> None:
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

    def _honour_keep_alive(self, value: str, response: Any) -> None:
        """Expire the connection before the server's ``Keep-Alive: timeout=N`` does."""
        for part in value.split(","):
            name, _, number = part.strip().partition("=")
            if name.strip().lower() == "timeout" and number.strip().isdigit():
                stream = response.extensions.get("network_stream")
                if stream is not None:
                    # A margin: the server's clock started when it sent the answer.
                    seconds = max(0.0, int(number) - 0.5)
                    expire_connection(self._inner, stream, seconds)
                return

    def _copy(self, request: Any) -> Any:
        """A twin of *request* for a hedge in flight beside it (same body, own state)."""
        return self._flavor.x.Request(
            request.method,
            request.url,
            headers=request.headers.copy(),
            content=request.content,
            extensions=dict(request.extensions),
        )

    def _retarget(self, request: Any, endpoint: Endpoint) -> Any:
        """*request* sent to *endpoint*: with that endpoint's credentials, never another's."""
        source = next((ep for ep in self._endpoints if ep.matches(request.url)), None)
        if source is None or source is endpoint:
            return request
        x = self._flavor.x
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
