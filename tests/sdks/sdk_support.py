"""Each SDK of docs/sdks.md, built as the page says, behind one small interface.

A test asks for ``SDKS`` (or one of them), opens it against a FaultyUpstream
with a seawall policy, and calls a GET-like and a POST operation of the real
SDK. The recipes are the page's; only ``sdk_retries=True`` departs from them,
to measure what two retry layers do (the SDK's sleeps made instant, so the
counts are the SDK's own and the tests stay fast).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anthropic
import anyio
import anyio.lowlevel
import githubkit
import openai
import pytest
import stripe
from githubkit.exception import GitHubException
from githubkit.retry import RETRY_DEFAULT, RetryOption

import seawall
import seawall.httpx2
from seawall.stripe import StripeHTTPClient, stripe_client
from seawall.testing import Fault

#: Backoff that never waits: seawall's retries run back to back.
NO_WAIT = seawall.Backoff(initial=0.0, maximum=0.0, jitter=False)
MESSAGES: Any = [{"role": "user", "content": "hi"}]

#: A 503 that the stainless SDKs (openai, anthropic) wait 1 ms after
#: (``retry-after-ms``; seawall reads ``Retry-After`` only).
SDK_503 = Fault(status=503, headers={"retry-after-ms": "1"})
#: A 503 whose body is a Stripe error: stripe keeps the headers of such a one.
STRIPE_503 = Fault(
    status=503,
    headers={"content-type": "application/json", "request-id": "req_503"},
    body=b'{"error": {"type": "api_error", "message": "overloaded"}}',
)


def policy(*, attempts: int = 3, **parts: Any) -> seawall.Policy:
    """seawall's retry as the tests want it: ``attempts``, no wait, no budget, no breaker."""
    parts.setdefault("breaker", None)
    return seawall.Policy(
        retry=seawall.Retry(attempts=attempts, backoff=NO_WAIT, budget=None), **parts
    )


class Sdk:
    """One SDK, configured as docs/sdks.md says, pointed at ``url``."""

    name: str
    get_path: str
    post_path: str
    #: The SDK puts an idempotency key on every POST itself (stripe).
    keys_posts: bool = False
    #: The SDK marks its resends, so seawall can tell two retry layers (stainless).
    marks_resends: bool = False
    #: The dependency's breaker (the client's, or the transport's), if its policy has one.
    breaker: seawall.Breaker | None
    #: The 503 the SDK understands (stripe keeps headers of a Stripe-shaped error only).
    fault_503: Fault = SDK_503
    #: What a status error reaches the caller as, after seawall's retries.
    status_error: type[Exception]
    #: What seawall's errors reach the caller as (None: as themselves); docs/sdks.md.
    wraps_seawall_errors: type[Exception] | None = None

    @property
    def failure(self) -> type[Exception]:
        """The class a caller catches for a failure of seawall's (or the transport's)."""
        return self.wraps_seawall_errors or seawall.SeawallError

    def seawall_error_as_caught(self, exc: BaseException, seawall_error: type[Exception]) -> None:
        """Assert that *exc*, raised by the SDK, is seawall's error as docs/sdks.md says."""
        if self.wraps_seawall_errors is None:
            assert type(exc) is seawall_error
        else:
            assert isinstance(exc, self.wraps_seawall_errors)
            assert isinstance(exc.__cause__, seawall_error)

    async def get(self) -> object:
        raise NotImplementedError

    async def post(self, key: str | None = None) -> object:
        raise NotImplementedError


class OpenAISdk(Sdk):
    name = "openai"
    get_path = "/v1/models"
    post_path = "/v1/chat/completions"
    marks_resends = True
    status_error = openai.APIStatusError

    def __init__(self, client: seawall.httpx2.ResilientClient, url: str, retries: bool) -> None:
        self.client = client
        self.breaker = client.breaker if client.policy.breaker is not None else None
        self.sdk = openai.AsyncOpenAI(
            api_key="sk-test",
            base_url=url + "/v1",
            http_client=client,
            max_retries=2 if retries else 0,
        )

    async def get(self) -> object:
        return await self.sdk.models.list()

    async def post(self, key: str | None = None) -> object:
        headers = {"Idempotency-Key": key} if key else None
        return await self.sdk.chat.completions.create(
            model="gpt-test", messages=MESSAGES, extra_headers=headers
        )


class AnthropicSdk(Sdk):
    name = "anthropic"
    get_path = "/v1/models"
    post_path = "/v1/messages"
    marks_resends = True
    status_error = anthropic.APIStatusError
    wraps_seawall_errors = anthropic.APIConnectionError

    def __init__(self, client: seawall.httpx2.ResilientClient, url: str, retries: bool) -> None:
        self.client = client
        self.breaker = client.breaker if client.policy.breaker is not None else None
        self.sdk = anthropic.AsyncAnthropic(
            api_key="sk-ant-test",
            base_url=url,
            http_client=client,
            max_retries=2 if retries else 0,
        )

    async def get(self) -> object:
        return await self.sdk.models.list()

    async def post(self, key: str | None = None) -> object:
        headers = {"Idempotency-Key": key} if key else None
        return await self.sdk.messages.create(
            model="claude-test", max_tokens=16, messages=MESSAGES, extra_headers=headers
        )


class _InstantStripe(StripeHTTPClient):
    """stripe's retry loop, with its sleeps (0.5 s * 2**n, jittered) made instant."""

    def sleep_async(self, secs: float) -> Any:
        return anyio.lowlevel.checkpoint()


class StripeSdk(Sdk):
    name = "stripe"
    get_path = "/v1/customers/cus_1"
    post_path = "/v1/customers"
    keys_posts = True
    fault_503 = STRIPE_503
    status_error = stripe.StripeError
    wraps_seawall_errors = stripe.APIConnectionError

    def __init__(self, client: seawall.ResilientClient, url: str, retries: bool) -> None:
        self.client = client
        self.breaker = client.breaker if client.policy.breaker is not None else None
        if retries:
            self.sdk = stripe.StripeClient(
                "sk_test_x",
                base_addresses={"api": url},
                http_client=_InstantStripe(client),
                max_network_retries=2,
            )
        else:
            self.sdk = stripe_client("sk_test_x", client, base_addresses={"api": url})

    async def get(self) -> object:
        return await self.sdk.v1.customers.retrieve_async("cus_1")

    async def post(self, key: str | None = None) -> object:
        options: Any = {"idempotency_key": key} if key else {}
        return await self.sdk.v1.customers.create_async({"email": "ada@example.com"}, options)


def _github_default_no_wait(exc: GitHubException, retry_count: int) -> RetryOption:
    """githubkit's default retry decisions (4 tries on a 5xx), without its 1, 4, 9 s sleeps."""
    # (timedelta(0) is falsy: githubkit would sleep 60 s for it.)
    return RetryOption(RETRY_DEFAULT(exc, retry_count).do_retry, timedelta(microseconds=1))


class GitHubSdk(Sdk):
    name = "githubkit"
    get_path = "/zen"
    post_path = "/markdown"
    status_error = githubkit.exception.RequestFailed
    wraps_seawall_errors = githubkit.exception.RequestError

    def __init__(self, transport: seawall.ResilientTransport, url: str, retries: bool) -> None:
        self.transport = transport
        rt = transport.runtime
        self.breaker = rt.breaker
        self.sdk = githubkit.GitHub(
            "ghp_test",
            base_url=url,
            async_transport=transport,
            http_cache=False,
            auto_retry=_github_default_no_wait if retries else False,
        )

    async def get(self) -> object:
        return await self.sdk.rest.meta.async_get_zen()

    async def post(self, key: str | None = None) -> object:
        headers = {"Idempotency-Key": key} if key else None
        return await self.sdk.rest.markdown.async_render(text="hi", headers=headers)


@dataclass(frozen=True)
class Kind:
    name: str

    @contextlib.asynccontextmanager
    async def open(
        self, url: str, dependency: str, pol: seawall.Policy, *, sdk_retries: bool = False
    ) -> AsyncIterator[Sdk]:
        """The SDK as docs/sdks.md builds it, over a seawall client for ``dependency``."""
        if self.name in ("openai", "anthropic"):
            async with seawall.httpx2.ResilientClient(dependency, policy=pol) as c2:
                cls = OpenAISdk if self.name == "openai" else AnthropicSdk
                yield cls(c2, url, sdk_retries)
        elif self.name == "stripe":
            async with seawall.ResilientClient(dependency, policy=pol) as c1:
                yield StripeSdk(c1, url, sdk_retries)
        else:
            transport = seawall.ResilientTransport(dependency, pol)
            try:
                yield GitHubSdk(transport, url, sdk_retries)
            finally:
                await transport.aclose()


SDKS = [pytest.param(Kind(n), id=n) for n in ("openai", "anthropic", "stripe", "githubkit")]


def chain(exc: BaseException | None) -> Iterator[BaseException]:
    """*exc* and its causes (``__cause__``, else an unsuppressed ``__context__``)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ if exc.__cause__ is not None else exc.__context__


def found(exc: BaseException, cls: type[BaseException]) -> BaseException:
    """The first error of class *cls* in *exc*'s chain (AssertionError if none)."""
    for item in chain(exc):
        if isinstance(item, cls):
            return item
    raise AssertionError(f"no {cls.__name__} in {[type(e).__name__ for e in chain(exc)]}")
