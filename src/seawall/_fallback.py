"""How an HTTP call ends: its answer, or its failure, and the fallback that may stand in.

A failed answer (5xx, or a 408/429 that retries could not get past) and a
failed call are answered by the fallback when the policy has one: a stale
cached response (GET only), else the default (``default_methods`` only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._decision import Stop
from ._exceptions import SeawallError
from ._http import IDEMPOTENT_METHODS
from ._report import Outcome, attach

if TYPE_CHECKING:
    from ._transport import HttpCall, TransportCore

__all__ = ["fail_call", "finish_response"]


async def finish_response(
    fe: TransportCore, call: HttpCall, response: Any, stopped: str | None
) -> Any:
    """End the call with *response*: store it, or let the fallback answer a failed one."""
    rt = fe.rt
    status = call.status_code = response.status_code
    retry_cfg = rt.policy.retry
    retryable = retry_cfg is not None and status in retry_cfg.retry_statuses
    if status < 400:
        call.outcome = Outcome.SUCCESS
    elif retryable and call.retries:
        call.outcome = Outcome.RETRY_EXHAUSTED
    else:
        call.outcome = Outcome.HTTP_ERROR
    call.stopped(stopped)
    cache = rt.cache
    request = call.request
    body = response.extensions.pop("seawall.body", None)
    if 200 <= status < 300:
        if cache is not None and body is not None and request.method == "GET":
            cache.store(request, status, response.headers, body)
    elif rt.policy.fallback is not None and (status >= 500 or (retryable and status in (408, 429))):
        # A failed answer: the fallback, if any, answers instead. Other 4xx are answers.
        fallback = await fallback_response(fe, call, None, response)
        if fallback is not None:
            await response.aclose()
            return fallback
    response.extensions["seawall"] = fe.report(call)
    return response


async def fail_call(
    fe: TransportCore, call: HttpCall, error: Exception, stopped: str | None, last: Any
) -> Any:
    """End the call on *error*: answer with a fallback, or raise it with its report."""
    if last is not None:
        # A retryable status, then a refusal before the next attempt: the
        # last answer is the call's result.
        return await finish_response(fe, call, last, stopped)
    request = call.request
    frame = call.frame
    if (
        call.unknown
        or (frame is not None and frame.unsafe)
        or (call.sent_unanswered and request.method not in IDEMPOTENT_METHODS)
    ):
        # Sent and unanswered: whatever ended the call (retries spent, an open
        # breaker, the deadline), the upstream may have acted on it. Say so,
        # rather than an error that reads as "nothing was sent".
        call.stopped(None if call.unknown else stopped)
        raise fe.unknown_error(call, error)
    if isinstance(error, SeawallError):
        call.outcome = error.reason
    else:
        outcome = fe.flavor.classify(error)[0]
        if outcome == Outcome.ERROR:
            # Not an HTTP failure (a bug, an invalid URL): no fallback.
            call.outcome = outcome
            call.stopped(None)
            attach(error, fe.report(call))
            raise error
        call.outcome = (
            Outcome.RETRY_EXHAUSTED if call.retries and stopped == Stop.ATTEMPTS else outcome
        )
    call.stopped(stopped)
    fallback = await fallback_response(fe, call, error, None)
    if fallback is not None:
        return fallback
    attach(error, fe.report(call))
    raise error


async def fallback_response(fe: TransportCore, call: HttpCall, error: Any, response: Any) -> Any:
    rt = fe.rt
    fallback = rt.policy.fallback
    if fallback is None:
        return None
    request = call.request
    answer = None
    if rt.cache is not None and request.method == "GET":
        # fetch, not lookup: a shared tier (seawall.redis) is read on a local
        # miss, within its budget, so the first failure is answered too.
        answer = await rt.cache.fetch(request, fallback.stale_if_error)  # type: ignore[arg-type]
        if answer is not None:
            answer = fe.flavor.adopt(answer, request)
            call.fallback = "cache"
    if (
        answer is None
        and fallback.default is not None
        and request.method in fallback.default_methods
    ):
        default: Any = fallback.default
        flavor = fe.flavor
        response_class: Any = flavor.x.Response
        if isinstance(default, response_class):
            answer = flavor.unread(default, request)
        else:
            if error is None:
                error = flavor.x.HTTPStatusError(
                    f"{response.status_code} from {rt.name!r}", request=request, response=response
                )
            answer = flavor.unread(default(request, error), request)
        call.fallback = "default"
    if answer is not None:
        answer.extensions["seawall"] = fe.report(call)
    return answer
