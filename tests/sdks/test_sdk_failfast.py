"""Through each real SDK: an open breaker fails fast, a hung call ends at seawall's deadline."""

from __future__ import annotations

import statistics
import time

import pytest
from sdk_support import SDKS, Kind, found, policy

import seawall
from seawall.testing import Fault, FaultyUpstream

pytestmark = pytest.mark.anyio

CALLS = 20


@pytest.mark.parametrize("kind", SDKS)
async def test_an_open_breaker_fails_fast_without_a_request(
    kind: Kind, api: FaultyUpstream, dependency: str
) -> None:
    pol = policy(breaker=seawall.CircuitBreaker())
    async with kind.open(api.url, dependency, pol) as sdk:
        assert sdk.breaker is not None
        sdk.breaker.force_open()
        times = []
        for call in [sdk.get, sdk.post] * (CALLS // 2):
            t0 = time.perf_counter()
            with pytest.raises(sdk.failure) as caught:
                await call()
            times.append(time.perf_counter() - t0)
            sdk.seawall_error_as_caught(caught.value, seawall.CircuitOpenError)
            rejected = found(caught.value, seawall.CircuitOpenError)
            report = seawall.report_of(caught.value)
            assert report is not None
            assert report is seawall.report_of(rejected)
            assert (report.outcome, report.attempts) == ("circuit_open", 0)
    assert api.count() == 0
    median = statistics.median(times)
    print(
        f"\n{kind.name}: open breaker, {CALLS} calls: median {median * 1e3:.3f} ms, "
        f"max {max(times) * 1e3:.3f} ms"
    )
    # An SDK that sleep-retried a refusal would wait 0.375 s or more (its
    # backoff's floor) per call; the first call pays for lazy imports.
    assert max(times[1:]) < 0.3
    assert median < 0.005


@pytest.mark.parametrize("kind", SDKS)
@pytest.mark.parametrize("method", ["get", "post"])
async def test_a_hung_call_ends_at_seawalls_deadline(
    kind: Kind, method: str, api: FaultyUpstream, dependency: str
) -> None:
    # The SDKs' own timeouts: openai and anthropic 600 s, stripe 80 s, githubkit none.
    pol = policy(timeouts=seawall.Timeouts(total=0.5))
    async with kind.open(api.url, dependency, pol) as sdk:
        path = sdk.get_path if method == "get" else sdk.post_path
        api.route(path, Fault.hang())
        t0 = time.perf_counter()
        with pytest.raises(sdk.failure) as caught:
            await (sdk.get() if method == "get" else sdk.post())
        elapsed = time.perf_counter() - t0
    assert 0.45 < elapsed < 5
    assert api.count(path) == 1
    found(caught.value, seawall.DeadlineExceededError)
    report = seawall.report_of(caught.value)
    assert report is not None
    if method == "get":
        sdk.seawall_error_as_caught(caught.value, seawall.DeadlineExceededError)
        assert report.outcome == "deadline_exceeded"
    else:
        # A POST sent and unanswered (stripe's keyed one too): the caller must
        # check upstream, or resend with the same key.
        sdk.seawall_error_as_caught(caught.value, seawall.OutcomeUnknownError)
        assert report.outcome == "outcome_unknown"
