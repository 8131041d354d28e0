"""Every recipe of docs/sdks.md, as users write it.

Type-checked (``mypy --strict src/seawall tests/typing`` in ``make typecheck``),
and run against a fake API by tests/sdks/test_sdk_recipes.py; not collected by
pytest itself (no ``test_`` name). Importing it has no side effect.
tests/sdks/test_sdk_docs.py checks that each ``python`` block of docs/sdks.md
appears here line for line (imports aside).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import anthropic
import githubkit
import httpx2
import openai
import stripe
from githubkit.exception import GitHubException

import seawall
import seawall.httpx2
from seawall.stripe import stripe_client

# -- errors and reports ------------------------------------------------------------------


class Unavailable(Exception):
    """The dependency failed; ``report`` says what seawall did about it."""

    def __init__(self, report: seawall.CallReport | None) -> None:
        super().__init__(report.outcome if report is not None else "failed")
        self.report = report


# -- openai ------------------------------------------------------------------------------


def openai_client(policy: seawall.Policy) -> openai.AsyncOpenAI:
    http = seawall.httpx2.ResilientClient("openai", policy=policy)
    # seawall is the one retry layer: the SDK's own retries off.
    return openai.AsyncOpenAI(http_client=http, max_retries=0)


async def summarize(client: openai.AsyncOpenAI, text: str) -> str:
    try:
        completion = await client.chat.completions.create(
            model="gpt-4.1-mini",
            messages=[{"role": "user", "content": f"Summarize: {text}"}],
        )
    except seawall.CircuitOpenError:
        return "(no summary: the model's API is failing, try again later)"
    except (seawall.SeawallError, openai.APIError) as exc:
        # seawall's errors come through openai as they are; httpx2's wrapped
        # in APIConnectionError/APITimeoutError; statuses as APIStatusError.
        raise Unavailable(seawall.report_of(exc)) from exc
    return completion.choices[0].message.content or ""


async def summarize_with_report(
    client: openai.AsyncOpenAI, text: str
) -> tuple[str, seawall.CallReport | None]:
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4.1-mini",
        messages=[{"role": "user", "content": f"Summarize: {text}"}],
    )
    completion = raw.parse()
    return completion.choices[0].message.content or "", seawall.report_of(raw.http_response)


# -- anthropic ---------------------------------------------------------------------------


def anthropic_client(policy: seawall.Policy) -> anthropic.AsyncAnthropic:
    http = seawall.httpx2.ResilientClient("anthropic", policy=policy)
    return anthropic.AsyncAnthropic(http_client=http, max_retries=0)


async def ask_claude(client: anthropic.AsyncAnthropic, question: str) -> str:
    try:
        message = await client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=1024,
            messages=[{"role": "user", "content": question}],
        )
    except anthropic.APIConnectionError as exc:
        # anthropic wraps every error that is not its own: seawall's is the cause.
        if isinstance(exc.__cause__, seawall.CircuitOpenError):
            return "(Claude is unavailable right now)"
        raise Unavailable(seawall.report_of(exc)) from exc
    except anthropic.APIStatusError as exc:
        raise Unavailable(seawall.report_of(exc)) from exc
    return "".join(block.text for block in message.content if block.type == "text")


# -- stripe ------------------------------------------------------------------------------


def stripe_api(http: seawall.ResilientClient) -> stripe.StripeClient:
    # StripeHTTPClient over `http`, with max_network_retries=0.
    return stripe_client(os.environ["STRIPE_API_KEY"], http)


async def create_customer(client: stripe.StripeClient, email: str) -> stripe.Customer:
    try:
        customer = await client.v1.customers.create_async({"email": email})
    except stripe.APIConnectionError as exc:
        # seawall's error (or httpx's) is the cause; stripe never retries it.
        raise Unavailable(seawall.report_of(exc)) from exc
    except stripe.APIError as exc:
        # stripe keeps no response, only its headers: the report rides on them.
        raise Unavailable(seawall.report_of(exc.headers)) from exc
    return customer


def report_of_stripe_object(obj: stripe.StripeObject) -> seawall.CallReport | None:
    response = obj.last_response
    return seawall.report_of(response.headers) if response is not None else None


# -- githubkit ---------------------------------------------------------------------------


def github_client(
    token: str, policy: seawall.Policy
) -> githubkit.GitHub[githubkit.TokenAuthStrategy]:
    transport = seawall.ResilientTransport("github", policy)
    return githubkit.GitHub(
        token,
        async_transport=transport,
        http_cache=False,  # the cache would sit in front of seawall
        auto_retry=False,
    )


async def zen(github: githubkit.GitHub[githubkit.TokenAuthStrategy]) -> str:
    try:
        response = await github.rest.meta.async_get_zen()
    except GitHubException as exc:
        # RequestFailed: a status, the report on exc.response.raw_response;
        # RequestError: seawall's error (or httpx's) in exc.exc and __cause__.
        raise Unavailable(seawall.report_of(exc)) from exc
    return response.text


# -- idempotency keys --------------------------------------------------------------------


async def draft_reply(client: openai.AsyncOpenAI, ticket_id: str, text: str) -> str:
    completion = await client.chat.completions.create(
        model="gpt-4.1-mini",
        messages=[{"role": "user", "content": text}],
        # Tells seawall that resending this POST is acceptable to you. OpenAI
        # does not document deduplicating on it: a resend may run twice.
        extra_headers={"Idempotency-Key": f"draft-reply-{ticket_id}"},
    )
    return completion.choices[0].message.content or ""


KEYED_POLICY = seawall.Policy(idempotency_headers=("Idempotency-Key", "X-Request-Key"))


# -- an LLM policy -----------------------------------------------------------------------


LLM_POLICY = seawall.Policy(
    timeouts=seawall.Timeouts(connect=5, read=120, write=30, pool=5, attempt=120, total=180),
    retry=seawall.Retry(
        attempts=2,
        backoff=seawall.Backoff(initial=1.0, maximum=20.0),
        retry_statuses=frozenset({408, 429, 500, 502, 503, 504, 529}),
        max_retry_after=30,
    ),
    bulkhead=seawall.Bulkhead(max_concurrent=16, max_wait=1.0),
    breaker=seawall.CircuitBreaker(window="time", window_size=60, slow_call_duration=150),
)


def openai_from_registry(registry: seawall.Registry) -> openai.AsyncOpenAI:
    http = registry.httpx2_client("openai")
    return openai.AsyncOpenAI(http_client=http, max_retries=0)


async def stream_answer(client: openai.AsyncOpenAI, question: str) -> AsyncIterator[str]:
    stream = await client.chat.completions.create(
        model="gpt-4.1-mini",
        messages=[{"role": "user", "content": question}],
        stream=True,
        # Each read of the stream waits at most 30 s (the shorter of this
        # and the policy's read timeout applies).
        timeout=httpx2.Timeout(30.0, connect=5.0),
    )
    async with stream:  # gives back the connection and the bulkhead slot
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content
