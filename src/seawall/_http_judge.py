"""How the HTTP front end judges an attempt, and reports a call.

Split from ``_transport`` (the front end's I/O) so each stays short: the
rules here are the retry-safety contract of docs/retries.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._decision import ANSWER, NEUTRAL_ATTR, Attempt, Decision, Stop, resend, retry, stop
from ._exceptions import DeadlineExceededError, OutcomeUnknownError, SeawallError
from ._report import CallReport, Outcome, RetryReason
from ._retry import parse_retry_after

if TYPE_CHECKING:
    from ._transport import HttpCall, TransportCore

__all__ = ["call_report", "judge_failure", "judge_response", "unknown_outcome"]


def judge_response(
    fe: TransportCore, call: HttpCall, attempt: Attempt, response: Any
) -> tuple[Decision, bool]:
    """Classify an answer: the call's result, a retry (status, Retry-After), or a stop."""
    fe.settle_attempt(call, attempt)
    status = call.status_code = response.status_code
    if call.tel is not None:
        call.tel.attempt_ended(
            attempt.span,
            attempt.target,
            fe.rt.clock.now() - attempt.t0,
            Outcome.SUCCESS if status < 400 else Outcome.HTTP_ERROR,
            status,
            str(status) if status >= 400 else None,
        )
        attempt.span = None
    breaker = attempt.route.breaker
    failed = breaker is not None and status in breaker.config.failure_statuses
    retry_cfg = fe.rt.policy.retry
    if retry_cfg is None or status not in retry_cfg.retry_statuses:
        return ANSWER, failed
    if status != 429 and not call.safe_after_send:
        return stop(Stop.NOT_IDEMPOTENT), failed
    if not call.replayable:
        return stop(Stop.UNREPLAYABLE_BODY), failed
    wait = parse_retry_after(response.headers.get("retry-after"))
    return retry(f"status_{status}", wait), failed


def judge_failure(fe: TransportCore, call: HttpCall, attempt: Attempt, exc: Exception) -> Decision:
    """Classify an attempt's error: was it sent, may it be resent, was the connection stale?"""
    fe.settle_attempt(call, attempt)
    outcome: str
    if isinstance(exc, DeadlineExceededError):
        outcome, reason, sent = Outcome.DEADLINE_EXCEEDED, "deadline", True
    else:
        outcome, reason, sent = fe.flavor.classify(exc)
    progress = attempt.progress
    if progress is not None and not progress.sent:
        sent = False  # cut while waiting for a connection: it never left
    call.in_flight_unsafe = False
    if call.tel is not None:
        call.tel.attempt_ended(
            attempt.span,
            attempt.target,
            fe.rt.clock.now() - attempt.t0,
            outcome,
            None,
            type(exc).__qualname__,
        )
        attempt.span = None
    if outcome == Outcome.ERROR:
        if isinstance(exc, fe.flavor.our_mistake):
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
            and isinstance(exc, fe.flavor.stale_errors)
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


def call_report(fe: TransportCore, call: HttpCall) -> CallReport:
    """The call's CallReport, as it stands."""
    rt = fe.rt
    breaker = rt.breaker
    if breaker is None:
        for ep in fe.endpoints:
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
        breaker_state=breaker.state.value if breaker is not None else None,
        bulkhead_wait=call.bulkhead_wait,
        fallback=call.fallback,
        timeouts=rt.policy.timeouts,
        deadline_remaining=call.deadline_remaining,
        retry_stopped=call.retry_stopped,
        roles=() if call.roles is None else tuple(call.roles),
        winner=call.winner,
        shared=rt.shared_mode(call.frame),
    )


def unknown_outcome(fe: TransportCore, call: HttpCall, cause: BaseException) -> OutcomeUnknownError:
    """The OutcomeUnknownError of a call whose request may have taken effect."""
    request = call.request
    unknown = OutcomeUnknownError(
        f"{request.method} to {fe.rt.name!r} was sent but no answer came back; "
        "it may or may not have taken effect upstream (retry with the same "
        "idempotency key, or verify)",
        dependency=fe.rt.name,
        request=request,
    )
    unknown.__cause__ = cause
    call.outcome = Outcome.OUTCOME_UNKNOWN
    unknown.report = call_report(fe, call)
    return unknown


# -- helpers -------------------------------------------------------------------
