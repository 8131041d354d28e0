"""One retry layer: requests per failing call through each real SDK.

With the SDK's retries off (the recipes of docs/sdks.md), a call that keeps
getting 503 costs exactly seawall's attempts when a resend is safe (a GET, or
a POST carrying an idempotency key), and one request for a keyless POST; a
keyless POST cut by a reset is sent once and ends in OutcomeUnknownError.
With both layers on, the counts multiply, and the SDKs that mark their
resends (openai, anthropic) make seawall log ``seawall.double_retry`` once.
"""

from __future__ import annotations

import pytest
import structlog.testing
from sdk_support import SDKS, Kind, found, policy

import seawall
from seawall.testing import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

ATTEMPTS = 3


@pytest.mark.parametrize("kind", SDKS)
async def test_a_failing_get_costs_seawalls_attempts(
    kind: Kind, api: FaultyUpstream, dependency: str
) -> None:
    async with kind.open(api.url, dependency, policy(attempts=ATTEMPTS)) as sdk:
        api.route(sdk.get_path, sdk.fault_503)
        with pytest.raises(sdk.status_error) as caught:
            await sdk.get()
    assert api.count(sdk.get_path) == ATTEMPTS
    report = seawall.report_of(caught.value) or seawall.report_of(
        getattr(caught.value, "headers", None)
    )
    assert report is not None
    assert (report.attempts, report.outcome) == (ATTEMPTS, "retry_exhausted")


@pytest.mark.parametrize("kind", SDKS)
async def test_a_failing_keyed_post_costs_seawalls_attempts(
    kind: Kind, api: FaultyUpstream, dependency: str
) -> None:
    async with kind.open(api.url, dependency, policy(attempts=ATTEMPTS)) as sdk:
        api.route(sdk.post_path, sdk.fault_503)
        with pytest.raises(sdk.status_error):
            await sdk.post(key="order-1")
    sent = api.requests(sdk.post_path)
    assert len(sent) == ATTEMPTS
    assert {r.idempotency_key for r in sent} == {"order-1"}


@pytest.mark.parametrize("kind", SDKS)
async def test_a_failing_post_without_key_is_sent_once(
    kind: Kind, api: FaultyUpstream, dependency: str
) -> None:
    async with kind.open(api.url, dependency, policy(attempts=ATTEMPTS)) as sdk:
        api.route(sdk.post_path, sdk.fault_503)
        with pytest.raises(sdk.status_error):
            await sdk.post()
    sent = api.requests(sdk.post_path)
    if sdk.keys_posts:
        # stripe keys every POST itself (one uuid per call): seawall may resend it.
        assert len(sent) == ATTEMPTS
        assert len({r.idempotency_key for r in sent}) == 1
        assert sent[0].idempotency_key
    else:
        assert len(sent) == 1
        assert sent[0].idempotency_key is None


@pytest.mark.parametrize("kind", SDKS)
@pytest.mark.parametrize("warm", [False, True], ids=["new-connection", "pooled-connection"])
async def test_a_reset_post_without_key_is_sent_once_and_outcome_unknown(
    kind: Kind, warm: bool, api: FaultyUpstream, dependency: str
) -> None:
    async with kind.open(api.url, dependency, policy(attempts=ATTEMPTS)) as sdk:
        if warm:
            # The POST then goes out on a kept-alive connection: a reset there
            # is no proof that the server never read it.
            api.route(sdk.get_path, Fault(status=404, body=b"{}"))
            with pytest.raises(sdk.status_error):
                await sdk.get()
            api.clear()
        api.route(sdk.post_path, Fault.reset_connection())
        with pytest.raises(sdk.failure) as caught:
            await sdk.post()
    unknown = found(caught.value, seawall.OutcomeUnknownError)
    report = seawall.report_of(caught.value)
    assert report is not None
    assert report.outcome == "outcome_unknown"
    assert report is seawall.report_of(unknown)
    if sdk.keys_posts:
        # stripe's own key makes the resend safe: seawall tries it 3 times (and
        # once more at once if the first went out on a stale pooled
        # connection); the outcome of the last stays unknown all the same.
        assert api.count(sdk.post_path) in {ATTEMPTS, ATTEMPTS + 1}
    else:
        assert api.count(sdk.post_path) == 1
    sdk.seawall_error_as_caught(caught.value, seawall.OutcomeUnknownError)


# -- both retry layers on ------------------------------------------------------------------

#: Requests for one always-503 call with the SDK's own retries left on (its
#: default count, waits made instant) and seawall's Retry(attempts=3); docs/sdks.md.
BOTH_LAYERS = {
    # (GET, keyless POST, keyed POST)
    "openai": (9, 3, 9),
    "anthropic": (9, 3, 9),
    # stripe: max_network_retries=2 (StripeClient's default is 0: no retries).
    "stripe": (9, 9, 9),
    "githubkit": (12, 4, 12),
}


@pytest.mark.parametrize("kind", SDKS)
async def test_both_layers_multiply_and_stainless_resends_are_reported_once(
    kind: Kind, api: FaultyUpstream, dependency: str
) -> None:
    with structlog.testing.capture_logs() as logs:
        async with kind.open(
            api.url, dependency, policy(attempts=ATTEMPTS), sdk_retries=True
        ) as sdk:
            api.route(sdk.get_path, sdk.fault_503)
            api.route(sdk.post_path, sdk.fault_503)
            counts = []
            for call in (sdk.get, sdk.post, lambda: sdk.post(key="order-2")):
                api.clear()
                with pytest.raises(sdk.status_error):
                    await call()
                counts.append(api.count())
    print(
        f"\n{kind.name}: requests per 503 call with both layers (GET, POST, keyed POST): {counts}"
    )
    assert tuple(counts) == BOTH_LAYERS[kind.name]
    warned = [e for e in logs if e["event"] == "seawall.double_retry"]
    if sdk.marks_resends:
        assert len(warned) == 1
        (event,) = warned
        assert event["log_level"] == "warning"
        assert event["dependency"] == dependency
        assert event["header"] == "x-stainless-retry-count"
        assert event["value"] == "1"
        assert "max_retries=0" in event["fix"]
    else:
        # stripe and githubkit resend identical requests: nothing tells seawall.
        assert warned == []
