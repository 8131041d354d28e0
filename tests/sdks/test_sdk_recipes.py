"""docs/sdks.md's recipes (tests/typing/sdk_recipes.py), run against the fake API."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import githubkit
import pytest
import sdk_recipes as recipes
import stripe
from sdk_support import policy
from test_sdk_stream import WORDS, sse_server

import seawall
import seawall.httpx2
from seawall.stripe import stripe_client
from seawall.testing import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

DOCS = Path(__file__).resolve().parents[2] / "docs" / "sdks.md"
JSON = {"content-type": "application/json"}
COMPLETION = Fault(
    headers=JSON,
    body=json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4.1-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "A summary."},
                    "finish_reason": "stop",
                }
            ],
        }
    ).encode(),
)
MESSAGE = Fault(
    headers=JSON,
    body=json.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "Hello."}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        }
    ).encode(),
)


@pytest.fixture
def openai_env(api: FaultyUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", f"{api.url}/v1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)


@pytest.mark.usefixtures("openai_env")
async def test_openai_recipes(api: FaultyUpstream) -> None:
    client = recipes.openai_client(policy(breaker=seawall.CircuitBreaker()))
    async with client:
        api.route("/v1/chat/completions", COMPLETION)
        assert await recipes.summarize(client, "a long text") == "A summary."
        text, report = await recipes.summarize_with_report(client, "a long text")
        assert text == "A summary."
        assert report is not None
        assert (report.dependency, report.outcome) == ("openai", "success")

        api.route("/v1/chat/completions", Fault.error(503))
        with pytest.raises(recipes.Unavailable) as unavailable:
            await recipes.summarize(client, "a long text")
        assert unavailable.value.report is not None
        assert unavailable.value.report.retry_stopped == "not_idempotent"

        api.route("/v1/chat/completions", Fault.reset_connection())
        with pytest.raises(recipes.Unavailable) as unavailable:
            await recipes.summarize(client, "a long text")
        assert isinstance(unavailable.value.__cause__, seawall.OutcomeUnknownError)

        api.clear()
        api.route("/v1/chat/completions", Fault.error(503), COMPLETION)
        assert await recipes.draft_reply(client, "T-1", "Thanks!") == "A summary."
        assert [r.idempotency_key for r in api.requests()] == ["draft-reply-T-1"] * 2

        http = client._client  # the recipe's ResilientClient, to force its breaker
        assert isinstance(http, seawall.httpx2.ResilientClient)
        http.breaker.force_open()
        api.clear()
        assert "no summary" in await recipes.summarize(client, "a long text")
        assert api.count() == 0


@pytest.mark.usefixtures("openai_env")
async def test_anthropic_recipes(api: FaultyUpstream) -> None:
    client = recipes.anthropic_client(policy(breaker=seawall.CircuitBreaker()))
    async with client:
        api.route("/v1/messages", MESSAGE)
        assert await recipes.ask_claude(client, "hi") == "Hello."

        api.route("/v1/messages", Fault.error(503))
        with pytest.raises(recipes.Unavailable) as unavailable:
            await recipes.ask_claude(client, "hi")
        assert unavailable.value.report is not None
        assert unavailable.value.report.status_code == 503

        api.route("/v1/messages", Fault.reset_connection())
        with pytest.raises(recipes.Unavailable) as unavailable:
            await recipes.ask_claude(client, "hi")
        assert unavailable.value.report is not None
        assert unavailable.value.report.outcome == "outcome_unknown"

        http = client._client
        assert isinstance(http, seawall.httpx2.ResilientClient)
        http.breaker.force_open()
        api.clear()
        assert await recipes.ask_claude(client, "hi") == "(Claude is unavailable right now)"
        assert api.count() == 0


async def test_stripe_recipes(
    api: FaultyUpstream, dependency: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_x")
    async with seawall.ResilientClient(dependency, policy=policy()) as http:
        assert isinstance(recipes.stripe_api(http), stripe.StripeClient)
        client = stripe_client("sk_test_x", http, base_addresses={"api": api.url})
        api.route(
            "/v1/customers",
            Fault(headers=JSON, body=b'{"id": "cus_1", "object": "customer"}'),
        )
        customer = await recipes.create_customer(client, "ada@example.com")
        assert customer.id == "cus_1"
        report = recipes.report_of_stripe_object(customer)
        assert report is not None
        assert report.outcome == "success"

        api.route(
            "/v1/customers",
            Fault(
                status=503,
                headers=JSON,
                body=b'{"error": {"type": "api_error", "message": "overloaded"}}',
            ),
        )
        with pytest.raises(recipes.Unavailable) as unavailable:
            await recipes.create_customer(client, "ada@example.com")
        assert unavailable.value.report is not None
        assert unavailable.value.report.attempts == 3  # stripe's key made it safe

        api.route("/v1/customers", Fault.reset_connection())
        with pytest.raises(recipes.Unavailable) as unavailable:
            await recipes.create_customer(client, "ada@example.com")
        assert unavailable.value.report is not None
        assert unavailable.value.report.outcome == "outcome_unknown"


async def test_githubkit_recipes(api: FaultyUpstream, dependency: str) -> None:
    github = recipes.github_client("ghp_test", policy())
    assert github.config.http_cache is False
    assert github.config.auto_retry is None
    assert isinstance(github.config.async_transport, seawall.ResilientTransport)

    transport = seawall.ResilientTransport(dependency, policy())
    local = githubkit.GitHub(
        "ghp_test", base_url=api.url, async_transport=transport, http_cache=False, auto_retry=False
    )
    async with local:
        api.route("/zen", Fault(body=b"Design for failure."))
        assert await recipes.zen(local) == "Design for failure."
        api.route("/zen", Fault.error(503))
        with pytest.raises(recipes.Unavailable) as unavailable:
            await recipes.zen(local)
        assert unavailable.value.report is not None
        assert unavailable.value.report.attempts == 3
        api.route("/zen", Fault.reset_connection())
        with pytest.raises(recipes.Unavailable) as unavailable:
            await recipes.zen(local)
        assert unavailable.value.report is not None
        assert unavailable.value.report.outcome == "retry_exhausted"


def _toml_block() -> str:
    text = DOCS.read_text()
    start = text.index('```toml title="seawall.toml"\n') + len('```toml title="seawall.toml"\n')
    return text[start : text.index("```", start)]


@pytest.mark.usefixtures("openai_env")
async def test_the_llm_policy_in_toml_is_the_one_in_python(
    api: FaultyUpstream, tmp_path: Path
) -> None:
    config = seawall.Config.from_mapping(tomllib.loads(_toml_block()))
    assert config.dependencies["openai"].policy == recipes.LLM_POLICY
    assert config.dependencies["anthropic"].policy == recipes.LLM_POLICY
    (tmp_path / "seawall.toml").write_text(_toml_block())
    registry = seawall.Registry.from_toml(tmp_path / "seawall.toml")
    client = recipes.openai_from_registry(registry)
    async with registry, client:
        api.route("/v1/chat/completions", COMPLETION)
        _, report = await recipes.summarize_with_report(client, "text")
    assert report is not None
    assert report.timeouts == recipes.LLM_POLICY.timeouts


# asyncio only: see test_sdk_stream.py (openai leaves its SSE generators to the GC).
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_stream_answer(anyio_backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with sse_server() as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")
        server.release(len(WORDS) + 1)
        async with recipes.openai_client(recipes.LLM_POLICY) as client:
            words = [word async for word in recipes.stream_answer(client, "hi")]
    assert words == WORDS
