"""ResilientTransport: the HTTP pipeline as an httpx transport.

One logical call runs these layers, outermost first::

    rate limit          dependency-wide, one token per call
    total deadline      Timeouts.total capped by the ambient deadline
    retry               only where safe (see below), backoff or Retry-After, budget
      per attempt:
      endpoint choice   the next endpoint whose breaker admits the attempt
      circuit breaker   the endpoint's (or the dependency's) breaker
      bulkhead          dependency-wide; no slot is held between attempts
      attempt timeout   Timeouts.attempt, body download included
    fallback            stale cached response, or the default, when it all failed

When is a retry safe? When the request never left (connect failure, connect or
pool timeout), for any method; after it may have reached the server (read or
write timeout, reset, retryable status), only for an idempotent method or a
request carrying an Idempotency-Key; a 429 was refused unprocessed, so it is
retried for any method. A request whose body cannot be replayed is never
retried. A non-idempotent request that was sent and got no answer raises
OutcomeUnknownError: the upstream may have acted on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import anyio
import httpx

from ._breaker import Breaker
from ._clock import MONOTONIC, Clock
from ._config import Policy
from ._deadline import _current as _ambient
from ._deadline import forward_header
from ._exceptions import (
    DeadlineExceededError,
    OutcomeUnknownError,
    RejectedError,
)
from ._report import CallReport, Outcome, attach, report_of
from ._retry import backoff_delay, backoff_sleep, parse_retry_after
from ._runtime import Runtime
from .telemetry._otel import CallTelemetry, log_call, start_call

__all__ = ["IDEMPOTENT_METHODS", "AttemptTimeout", "ResilientTransport"]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
IDEMPOTENCY_HEADER = "Idempotency-Key"

# Errors raised before a byte of the request left: safe to retry for any method.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def origin_of(url: httpx.URL) -> str:
    """``scheme://host:port`` of a URL, with the default port made explicit."""
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"{url.scheme}://{url.host}:{port}"


def _unread(response: httpx.Response, request: httpx.Request) -> httpx.Response:
    """A fresh copy of an already-read response, for the client to read like any other.

    httpx times a response (``response.elapsed``) when it closes the body
    stream while reading it; a response built with ``content=`` was read and
    closed on construction, so the client would never set its ``elapsed``.
    """
    if not response.is_closed:
        return response  # a stream nobody read yet: the client reads it as usual
    try:
        body = response.content
    except httpx.ResponseNotRead:
        return response
    # ``content`` is decoded already: the copy must not be decoded again.
    headers = [(k, v) for k, v in response.headers.raw if k.lower() != b"content-encoding"]
    return httpx.Response(
        response.status_code,
        headers=headers,
        # ``stream=``, unlike ``content=``, leaves it unread: the client
        # reads and decodes it as any network stream (and sets ``elapsed``).
        stream=httpx.ByteStream(body),
        extensions=dict(response.extensions),
        request=request,
    )


class _SendProgress:
    """An httpcore ``trace`` hook that notes whether the request began to go out.

    When the attempt timeout or the deadline cuts an attempt, this tells a
    request still waiting for a pool connection or a TCP handshake (never
    sent: safe to retry, no outcome unknown) from one that was sent. The
    caller's own ``trace`` hook, if any, still sees every event.
    """

    __slots__ = ("_theirs", "sent")

    def __init__(self, theirs: Any) -> None:
        self._theirs = theirs
        self.sent = False

    async def __call__(self, name: str, info: dict[str, Any]) -> None:
        if name.endswith(".send_request_headers.started"):
            self.sent = True
        if self._theirs is not None:
            await self._theirs(name, info)


class _Endpoint:
    __slots__ = ("breaker", "origin", "prefix", "url")

    def __init__(self, url: str, breaker: Breaker | None) -> None:
        self.prefix = url.rstrip("/")
        self.url = httpx.URL(self.prefix)
        self.origin = origin_of(self.url)
        self.breaker = breaker


class AttemptTimeout(httpx.ReadTimeout, TimeoutError):
    """An attempt cut by ``Timeouts.attempt``.

    Both an ``httpx.ReadTimeout`` (code around an httpx SDK catches it as any
    read timeout, which is what it counts as) and a built-in ``TimeoutError``.
    """


# The request itself is wrong (a scheme httpx cannot send, a header it refuses):
# nothing left, a retry cannot help, and the upstream is not to blame.
_OUR_MISTAKE = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL)


def _classify(exc: BaseException) -> tuple[str, str, bool]:
    """(outcome, retry reason, sent) for an httpx error."""
    if isinstance(exc, _OUR_MISTAKE):
        return Outcome.ERROR, type(exc).__name__, False
    if isinstance(exc, AttemptTimeout):
        return Outcome.TIMEOUT, "attempt_timeout", True
    if isinstance(exc, httpx.ConnectTimeout):
        return Outcome.TIMEOUT, "connect_timeout", False
    if isinstance(exc, httpx.PoolTimeout):
        return Outcome.TIMEOUT, "pool_timeout", False
    if isinstance(exc, httpx.ConnectError):
        return Outcome.CONNECT_ERROR, "connect_error", False
    if isinstance(exc, httpx.ReadTimeout):
        return Outcome.TIMEOUT, "read_timeout", True
    if isinstance(exc, httpx.WriteTimeout):
        return Outcome.TIMEOUT, "write_timeout", True
    if isinstance(exc, httpx.TransportError):
        return Outcome.TRANSPORT_ERROR, "transport_error", True
    return Outcome.ERROR, type(exc).__name__, True


class ResilientTransport(httpx.AsyncBaseTransport):
    """An httpx transport that applies a seawall :class:`~seawall.Policy` to every request.

    It wraps an inner transport (by default an ``httpx.AsyncHTTPTransport``
    built from the policy's pool settings), so any httpx-based SDK that
    accepts an ``httpx.AsyncClient`` gets seawall's protection::

        transport = seawall.ResilientTransport("payments", policy)
        sdk = PaymentsSDK(http_client=httpx.AsyncClient(transport=transport))

    With ``endpoints`` (base URLs of redundant providers), a request whose URL
    starts with one of them is sent to the first endpoint whose breaker admits
    it, and each retry to the next one.
    """

    def __init__(
        self,
        dependency: str,
        policy: Policy | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        endpoints: Sequence[str] | None = None,
        clock: Clock | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        if runtime is None:
            runtime = Runtime(
                dependency, policy or Policy(), clock or MONOTONIC, endpoints=endpoints or ()
            )
        self._rt = rt = runtime
        self._endpoints = [_Endpoint(url, rt.endpoint_breakers.get(url)) for url in rt.endpoints]
        if transport is None:
            pool = rt.policy.pool
            transport = httpx.AsyncHTTPTransport(
                limits=httpx.Limits(
                    max_connections=pool.max_connections,
                    max_keepalive_connections=pool.max_keepalive,
                    keepalive_expiry=pool.keepalive_expiry,
                )
            )
        self._inner = transport
        # httpcore-backed: its trace events say when a request starts going out.
        self._traced = isinstance(transport, httpx.AsyncHTTPTransport)
        rt.transports.add(self)
        self._in_flight = 0
        self._closing = False
        t = rt.policy.timeouts
        self._policy_phases: dict[str, float | None] = {
            "connect": t.connect,
            "read": t.read,
            "write": t.write,
            "pool": t.pool,
        }

    # -- handles ---------------------------------------------------------------

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
    def inner(self) -> httpx.AsyncBaseTransport:
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
        pool = getattr(self._inner, "_pool", None)
        connections = getattr(pool, "connections", None)
        if isinstance(connections, list):
            stats["connections"] = len(connections)
            stats["idle"] = sum(1 for c in connections if c.is_idle())
        return stats

    def _swap_runtime(self, runtime: Runtime) -> None:
        """Serve later calls under a new runtime (Registry.reload); calls in flight keep theirs."""
        self._rt = runtime
        runtime.transports.add(self)
        self._endpoints = [
            _Endpoint(url, runtime.endpoint_breakers.get(url)) for url in runtime.endpoints
        ]
        t = runtime.policy.timeouts
        self._policy_phases = {
            "connect": t.connect,
            "read": t.read,
            "write": t.write,
            "pool": t.pool,
        }

    def _close_when_idle(self) -> None:
        self._closing = True

    # -- the pipeline ------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._in_flight += 1
        tel = start_call(self._rt.name, request.method, self._inner)
        try:
            response = await self._handle(request, tel)
        except BaseException as exc:
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

    async def _handle(self, request: httpx.Request, tel: CallTelemetry | None) -> httpx.Response:
        rt = self._rt
        clock = rt.clock
        start = clock.now()
        method = request.method
        extensions = request.extensions
        key = extensions.get("idempotency_key")
        if key is not None and IDEMPOTENCY_HEADER not in request.headers:
            request.headers[IDEMPOTENCY_HEADER] = str(key)
        safe_after_send = method in IDEMPOTENT_METHODS or IDEMPOTENCY_HEADER in request.headers
        replayable = hasattr(request, "_content")
        streaming = bool(extensions.get("seawall.stream"))
        their_trace = extensions.get("trace")
        state = _CallState(self, request, start)

        if rt.limiter is not None:
            try:
                await rt.limiter.acquire()
            except RejectedError as exc:
                return await self._fail(state, exc, exc.reason)

        # The total deadline, on the runtime's clock.
        policy = rt.policy
        timeouts = policy.timeouts
        total = timeouts.total
        ambient = _ambient.get()
        if ambient is not None:
            left = ambient[1] - ambient[0].now()
            total = left if total is None or left < total else total
        deadline_at = None if total is None else start + total
        state.deadline_remaining = total

        retry = policy.retry
        max_attempts = retry.attempts if retry is not None and replayable else 1
        if retry is not None and not replayable:
            state.retry_stopped_hint = "unreplayable_body"
        budget = rt.budget
        if budget is not None:
            budget.record_call()
        attempt_limit = timeouts.attempt
        base_timeouts = self._phase_timeouts(extensions.get("timeout"))
        endpoints = self._endpoints
        next_endpoint = 0
        last_exc: BaseException | None = None
        last_response: httpx.Response | None = None

        while True:
            state.attempts += 1
            # -- time left for this attempt
            limit = attempt_limit
            by_deadline = False
            left = math.inf
            if deadline_at is not None:
                left = deadline_at - clock.now()
                if left <= 0:
                    if last_response is not None:
                        state.attempts -= 1
                        return await self._finish_response(state, last_response, True, "deadline")
                    error = DeadlineExceededError(
                        f"deadline of {rt.name!r} ran out", dependency=rt.name
                    )
                    error.__cause__ = last_exc
                    state.attempts -= 1
                    return await self._fail(state, error, error.reason)
                if limit is None or left < limit:
                    limit, by_deadline = left, True

            # -- endpoint and breaker: skipping an open endpoint costs no attempt
            permit = -1
            breaker: Breaker | None
            target = request
            if endpoints and self._under_endpoints(request.url):
                chosen = None
                last_rejection: RejectedError | None = None
                n = len(endpoints)
                for i in range(n):
                    ep = endpoints[(next_endpoint + i) % n]
                    if ep.breaker is None:
                        chosen = ep
                        next_endpoint = (next_endpoint + i + 1) % n
                        break
                    try:
                        permit = ep.breaker.acquire()
                    except RejectedError as exc:
                        last_rejection = exc
                        continue
                    chosen = ep
                    next_endpoint = (next_endpoint + i + 1) % n
                    break
                if chosen is None:
                    assert last_rejection is not None
                    state.attempts -= 1
                    return await self._fail(
                        state,
                        last_rejection,
                        Outcome.CIRCUIT_OPEN,
                        cause=last_exc,
                        last_response=last_response,
                    )
                breaker = chosen.breaker
                state.endpoint = chosen.origin
                target = self._retarget(request, chosen)
            else:
                breaker = rt.breaker
                if state.endpoint is None:
                    state.endpoint = origin_of(request.url)
                if breaker is not None:
                    try:
                        permit = breaker.acquire()
                    except RejectedError as exc:
                        state.attempts -= 1
                        return await self._fail(
                            state, exc, exc.reason, cause=last_exc, last_response=last_response
                        )
            if state.breaker_before is None and breaker is not None:
                state.breaker_before = breaker._state.value

            # -- bulkhead
            token = None
            bulkhead = rt.bulkhead
            if bulkhead is not None:
                token = bulkhead.try_acquire()
                if token is None:
                    waited = clock.now()
                    try:
                        token = await bulkhead.acquire()
                    except BaseException as exc:
                        if permit >= 0:
                            breaker.release(permit)  # type: ignore[union-attr]
                        if isinstance(exc, RejectedError):
                            state.attempts -= 1
                            return await self._fail(
                                state, exc, exc.reason, cause=last_exc, last_response=last_response
                            )
                        raise
                    state.bulkhead_wait += clock.now() - waited

            # -- the attempt
            t0 = clock.now()
            self._apply_timeouts(target, base_timeouts, left)
            if policy.forward_deadline and deadline_at is not None:
                target.headers[forward_header.get()] = f"{max(0.0, left):.3f}"
            if state.attempts > 1:
                target.extensions["seawall.resend_count"] = state.attempts - 1
            response: httpx.Response | None = None
            failure: BaseException | None = None
            progress: _SendProgress | None = None
            if limit is not None and not safe_after_send and self._traced:
                # Only where a cut attempt's fate depends on it: was it sent?
                progress = target.extensions["trace"] = _SendProgress(their_trace)
            cut_unsent = False
            span = tel.attempt_started(target, state.attempts - 1) if tel is not None else None
            try:
                if limit is None:
                    response = await self._send(target, streaming)
                else:
                    with anyio.CancelScope(deadline=anyio.current_time() + limit) as scope:
                        response = await self._send(target, streaming)
                    if scope.cancelled_caught:
                        response = None
                        # Cut while waiting for a connection: nothing left, never sent.
                        cut_unsent = progress is not None and not progress.sent
                        if by_deadline:
                            failure = DeadlineExceededError(
                                f"deadline of {rt.name!r} ran out during attempt {state.attempts}",
                                dependency=rt.name,
                            )
                        else:
                            failure = AttemptTimeout(
                                f"attempt {state.attempts} to {rt.name!r} took longer "
                                f"than {attempt_limit} s",
                                request=target,
                            )
            except Exception as exc:
                failure = exc
            except BaseException:
                # Cancelled by the caller: neutral for the breaker; the slot goes back.
                if span is not None:
                    span.end()
                if token is not None:
                    bulkhead.release(token)  # type: ignore[union-attr]
                if permit >= 0:
                    breaker.release(permit)  # type: ignore[union-attr]
                raise
            if token is not None:
                bulkhead.release(token)  # type: ignore[union-attr]
            if progress is not None:  # the request's own hook (if any) goes back
                if their_trace is None:
                    target.extensions.pop("trace", None)
                else:
                    target.extensions["trace"] = their_trace
            duration = clock.now() - t0

            # -- a response
            if response is not None:
                status = response.status_code
                if tel is not None:
                    tel.attempt_ended(
                        span,
                        target,
                        duration,
                        Outcome.SUCCESS if status < 400 else Outcome.HTTP_ERROR,
                        status,
                        str(status) if status >= 400 else None,
                    )
                if permit >= 0:
                    breaker.record(  # type: ignore[union-attr]
                        permit,
                        duration,
                        status in breaker.config.failure_statuses,  # type: ignore[union-attr]
                    )
                if retry is None or status not in retry.retry_statuses:
                    return await self._finish_response(state, response, False, None)
                # A retryable status.
                if status != 429 and not safe_after_send:
                    return await self._finish_response(state, response, False, "not_idempotent")
                if state.attempts >= max_attempts:
                    return await self._finish_response(
                        state, response, True, state.retry_stopped_hint
                    )
                delay: float | None = None
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                if retry_after is not None:
                    if retry_after > retry.max_retry_after or (
                        deadline_at is not None and clock.now() + retry_after >= deadline_at
                    ):
                        return await self._finish_response(
                            state, response, True, "retry_after_too_long"
                        )
                    delay = retry_after
                stop = self._retry_stop(state, deadline_at, delay)
                if isinstance(stop, str):
                    return await self._finish_response(state, response, True, stop)
                state.retries.append(f"status_{status}")
                if tel is not None:
                    tel.retry(f"status_{status}", state.attempts, stop)
                last_exc = None
                if streaming:
                    # Its connection must go back now; a streamed body cannot be kept.
                    await response.aclose()
                    last_response = None
                else:
                    last_response = response  # buffered: the answer if nothing better comes
                await backoff_sleep(clock, stop)
                continue

            # -- a failure
            assert failure is not None
            if permit >= 0:
                if (
                    isinstance(failure, _OUR_MISTAKE) or rt.ignore_on(failure)  # type: ignore[arg-type]
                ):
                    # Says nothing of the upstream's health.
                    breaker.release(permit)  # type: ignore[union-attr]
                else:
                    # As in Resilience4j, an error record_on does not match
                    # counts as a success.
                    breaker.record(permit, duration, rt.record_on(failure))  # type: ignore[union-attr, arg-type]
            if isinstance(failure, DeadlineExceededError):
                outcome, reason, sent = Outcome.DEADLINE_EXCEEDED, "deadline", True
            else:
                outcome, reason, sent = _classify(failure)
            if cut_unsent:
                sent = False
            if tel is not None:
                tel.attempt_ended(span, target, duration, outcome, None, type(failure).__qualname__)
            if outcome == Outcome.ERROR:
                # Not an HTTP failure (a bug, an invalid URL): no retry, no fallback.
                state.outcome = outcome
                attach(failure, state.report())
                raise failure
            if sent:
                state.sent_unanswered = True
            if sent and not safe_after_send:
                unknown = OutcomeUnknownError(
                    f"{method} to {rt.name!r} was sent but no answer came back "
                    f"({reason}); it may or may not have taken effect upstream",
                    dependency=rt.name,
                    request=request,
                )
                unknown.__cause__ = failure
                state.outcome = Outcome.OUTCOME_UNKNOWN
                unknown.report = state.report()
                raise unknown
            last_exc = failure
            if isinstance(failure, DeadlineExceededError):
                failure.__cause__ = None
                return await self._fail(state, failure, outcome)
            if state.attempts >= max_attempts:
                return await self._fail(
                    state,
                    failure,
                    Outcome.RETRY_EXHAUSTED if state.retries else outcome,
                    stopped=state.retry_stopped_hint,
                )
            stop = self._retry_stop(state, deadline_at, None)
            if isinstance(stop, str):
                return await self._fail(state, failure, outcome, stopped=stop)
            state.retries.append(reason)
            if tel is not None:
                tel.retry(reason, state.attempts, stop)
            await backoff_sleep(clock, stop)

    # -- helpers -------------------------------------------------------------------

    def _retry_stop(
        self, state: _CallState, deadline_at: float | None, delay: float | None
    ) -> float | str:
        """The wait before the next attempt, or why there is none."""
        rt = self._rt
        if delay is None:
            delay = backoff_delay(rt.policy.retry.backoff, state.attempts)  # type: ignore[union-attr]
        if deadline_at is not None and rt.clock.now() + delay >= deadline_at:
            return "deadline"
        budget = rt.budget
        if budget is not None and not budget.try_spend():
            return "budget_exhausted"
        return delay

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
    def _apply_timeouts(request: httpx.Request, base: dict[str, Any], left: float) -> None:
        """Cap httpx's per-phase timeouts by the policy and by the time left."""
        timeouts = {}
        for phase in ("connect", "read", "write", "pool"):
            value = base.get(phase)
            if left != math.inf and (value is None or value > left):
                value = max(left, 0.001)
            timeouts[phase] = value
        request.extensions["timeout"] = timeouts

    def _under_endpoints(self, url: httpx.URL) -> bool:
        """Whether *url* lies under one of the endpoints (others go out as they are,
        with no endpoint's breaker: an SDK may call a token URL elsewhere)."""
        text = str(url)
        return any(text.startswith(ep.prefix) for ep in self._endpoints)

    def _retarget(self, request: httpx.Request, endpoint: _Endpoint) -> httpx.Request:
        url = str(request.url)
        for ep in self._endpoints:
            if url.startswith(ep.prefix):
                if ep is endpoint:
                    return request
                new_url = endpoint.prefix + url[len(ep.prefix) :]
                headers = request.headers.copy()
                headers["Host"] = endpoint.url.netloc.decode("ascii")
                return httpx.Request(
                    request.method,
                    new_url,
                    headers=headers,
                    content=request.content if hasattr(request, "_content") else None,
                    stream=None if hasattr(request, "_content") else request.stream,
                    extensions=dict(request.extensions),
                )
        return request

    async def _send(self, request: httpx.Request, streaming: bool) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if streaming:
            return response
        # Buffer the body inside the attempt, so the attempt timeout covers it
        # and a retry can follow a body that broke off.
        try:
            body = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
        finally:
            await response.aclose()
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            # ``stream=``, unlike ``content=``, leaves it unread: the client
            # reads and decodes it as any network stream (and sets ``elapsed``).
            stream=httpx.ByteStream(body),
            extensions={**response.extensions, "seawall.body": body},
        )

    async def _finish_response(
        self,
        state: _CallState,
        response: httpx.Response,
        retryable: bool,
        stopped: str | None,
    ) -> httpx.Response:
        rt = self._rt
        status = response.status_code
        state.status_code = status
        if status < 400:
            state.outcome = Outcome.SUCCESS
        elif retryable and state.retries:
            state.outcome = Outcome.RETRY_EXHAUSTED
        else:
            state.outcome = Outcome.HTTP_ERROR
        state.retry_stopped = stopped
        cache = rt.cache
        request = state.request
        body = response.extensions.pop("seawall.body", None)
        if 200 <= status < 300:
            if cache is not None and body is not None and request.method == "GET":
                cache.store(request, status, response.headers, body)
        elif rt.policy.fallback is not None and (
            status >= 500 or (retryable and status in (408, 429))
        ):
            # A failed answer (5xx, or a 408/429 that retries could not get
            # past): the fallback, if any, answers instead. Other 4xx are answers.
            fallback = self._fallback_response(state, None, response)
            if fallback is not None:
                await response.aclose()
                return fallback
        response.extensions["seawall"] = state.report()
        return response

    def _fallback_response(
        self, state: _CallState, error: BaseException | None, response: httpx.Response | None
    ) -> httpx.Response | None:
        rt = self._rt
        fallback = rt.policy.fallback
        if fallback is None:
            return None
        request = state.request
        answer: httpx.Response | None = None
        if rt.cache is not None and request.method == "GET":
            answer = rt.cache.lookup(request, fallback.stale_if_error)  # type: ignore[arg-type]
            if answer is not None:
                state.fallback = "cache"
        if (
            answer is None
            and fallback.default is not None
            and request.method in fallback.default_methods
        ):
            default = fallback.default
            if isinstance(default, httpx.Response):
                answer = _unread(default, request)
            else:
                if error is None:
                    assert response is not None
                    error = httpx.HTTPStatusError(
                        f"{response.status_code} from {rt.name!r}",
                        request=request,
                        response=response,
                    )
                answer = _unread(default(request, error), request)
            state.fallback = "default"
        if answer is not None:
            answer.extensions["seawall"] = state.report()
        return answer

    async def _fail(
        self,
        state: _CallState,
        error: BaseException,
        outcome: str,
        *,
        cause: BaseException | None = None,
        stopped: str | None = None,
        last_response: httpx.Response | None = None,
    ) -> httpx.Response:
        """End the call on *error*: answer with a fallback, or raise it with its report."""
        if last_response is not None:
            # A retryable status, then a rejection before the next attempt:
            # the last answer is the call's result.
            return await self._finish_response(state, last_response, True, outcome)
        request = state.request
        if state.sent_unanswered and request.method not in IDEMPOTENT_METHODS:
            # A keyed POST or PATCH went out, got no answer, and no retry got
            # one either: whatever ended the call (retries spent, an open
            # breaker, the deadline), the upstream may have acted on it. Say so,
            # rather than a rejection that reads as "nothing was sent".
            unknown = OutcomeUnknownError(
                f"{request.method} to {self._rt.name!r} was sent but no answer came back; "
                "it may or may not have taken effect upstream (retry with the same "
                "idempotency key, or verify)",
                dependency=self._rt.name,
                request=request,
            )
            unknown.__cause__ = error
            state.outcome = Outcome.OUTCOME_UNKNOWN
            state.retry_stopped = stopped
            unknown.report = state.report()
            raise unknown
        state.outcome = outcome
        state.retry_stopped = stopped
        fallback = self._fallback_response(state, error, None)
        if fallback is not None:
            return fallback
        attach(error, state.report())
        if cause is not None and error.__cause__ is None:
            raise error from cause
        raise error


class _CallState:
    """The mutable record of one logical call, frozen into a CallReport at the end."""

    __slots__ = (
        "attempts",
        "breaker_before",
        "bulkhead_wait",
        "deadline_remaining",
        "endpoint",
        "fallback",
        "outcome",
        "request",
        "retries",
        "retry_stopped",
        "retry_stopped_hint",
        "sent_unanswered",
        "start",
        "status_code",
        "transport",
    )

    def __init__(self, transport: ResilientTransport, request: httpx.Request, start: float) -> None:
        self.transport = transport
        self.request = request
        self.start = start
        self.attempts = 0
        self.retries: list[str] = []
        self.endpoint: str | None = None
        self.breaker_before: str | None = None
        self.bulkhead_wait = 0.0
        self.fallback: str | None = None
        self.outcome = Outcome.SUCCESS
        self.status_code: int | None = None
        self.retry_stopped: str | None = None
        self.retry_stopped_hint: str | None = None
        self.deadline_remaining: float | None = None
        #: An attempt may have reached the upstream and got no answer.
        self.sent_unanswered = False

    def report(self) -> CallReport:
        t = self.transport
        rt = t._rt
        breaker = rt.breaker
        if breaker is None and t._endpoints:
            for ep in t._endpoints:
                if ep.origin == self.endpoint:
                    breaker = ep.breaker
        return CallReport(
            dependency=rt.name,
            outcome=self.outcome,
            attempts=self.attempts,
            retries=tuple(self.retries),
            elapsed=rt.clock.now() - self.start,
            endpoint=self.endpoint,
            method=self.request.method,
            status_code=self.status_code,
            breaker_state_before=self.breaker_before,
            breaker_state=breaker._state.value if breaker is not None else None,
            bulkhead_wait=self.bulkhead_wait,
            fallback=self.fallback,
            timeouts=rt.policy.timeouts,
            deadline_remaining=self.deadline_remaining,
            retry_stopped=self.retry_stopped,
        )
