"""PaymentProvider: the fake payment provider with a ledger, against its real loopback server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

import seawall.testing
from seawall.testing import Charge, Fault, PaymentProvider

# Short: a hang must show up as a timeout fast.
TIMEOUT = httpx.Timeout(1.0)


@pytest.fixture
def provider() -> Iterator[PaymentProvider]:
    with PaymentProvider() as server:
        yield server


@pytest.fixture
def client(provider: PaymentProvider) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=provider.url, timeout=TIMEOUT) as c:
        yield c


def _charge(client: httpx.Client, order: str, key: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/charges", json={"order_id": order, "amount": 42}, headers=headers)


def test_it_is_public_and_lazily_imported() -> None:
    assert seawall.testing.PaymentProvider is PaymentProvider
    assert seawall.testing.Charge is Charge
    assert "PaymentProvider" in seawall.testing.__all__
    assert "Charge" in seawall.testing.__all__


def test_a_charge_is_made_and_answered(provider: PaymentProvider, client: httpx.Client) -> None:
    assert provider.url == f"http://127.0.0.1:{provider.port}"
    response = _charge(client, "o-1", key="k-1")
    assert response.status_code == 201
    assert response.json() == {
        "id": "ch_000001",
        "order_id": "o-1",
        "amount": 42,
        "status": "succeeded",
    }
    assert provider.charges() == [Charge("ch_000001", "o-1", 42, "k-1", cancelled=False)]
    assert provider.charge_counts() == {"o-1": 1}
    assert provider.count("/charges") == 1


def test_a_repeated_key_charges_once_and_answers_the_first_charge(
    provider: PaymentProvider, client: httpx.Client
) -> None:
    first = _charge(client, "o-1", key="k-1")
    again = _charge(client, "o-1", key="k-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert provider.charge_counts() == {"o-1": 1}
    assert len(provider.charges()) == 1
    assert provider.count("/charges", idempotency_key="k-1") == 2


def test_a_key_reused_for_another_order_is_refused(
    provider: PaymentProvider, client: httpx.Client
) -> None:
    _charge(client, "o-1", key="k-1")
    reused = _charge(client, "o-2", key="k-1")
    assert reused.status_code == 422
    assert "idempotency key" in reused.json()["error"]
    assert provider.charge_counts() == {"o-1": 1}


def test_without_a_key_every_post_charges(provider: PaymentProvider, client: httpx.Client) -> None:
    assert _charge(client, "o-1").status_code == 201
    assert _charge(client, "o-1").status_code == 201
    assert provider.charge_counts() == {"o-1": 2}
    assert [c.id for c in provider.charges()] == ["ch_000001", "ch_000002"]
    assert all(c.idempotency_key is None for c in provider.charges())


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b'{"amount": 42}', id="no-order"),
        pytest.param(b'{"order_id": "o-1", "amount": "42"}', id="amount-not-int"),
        pytest.param(b'{"order_id": "o-1", "amount": true}', id="amount-bool"),
    ],
)
def test_a_malformed_charge_is_refused_and_charges_nothing(
    provider: PaymentProvider, client: httpx.Client, body: bytes
) -> None:
    response = client.post("/charges", content=body)
    assert response.status_code == 400
    assert "error" in response.json()
    assert provider.charges() == []


def test_the_status_of_an_order(provider: PaymentProvider, client: httpx.Client) -> None:
    missing = client.get("/charges/o-1")
    assert missing.status_code == 404
    assert missing.json() == {"error": "no such charge"}
    _charge(client, "o-1")
    _charge(client, "o-1")
    found = client.get("/charges/o-1")
    assert found.status_code == 200
    assert found.json() == {
        "id": "ch_000002",
        "order_id": "o-1",
        "amount": 42,
        "status": "succeeded",
        "count": 2,
    }


def test_cancel_refunds_every_charge_of_the_order_and_is_idempotent(
    provider: PaymentProvider, client: httpx.Client
) -> None:
    assert client.post("/charges/o-1/cancel").status_code == 404
    _charge(client, "o-1")
    _charge(client, "o-1")
    _charge(client, "o-2")
    for _ in range(2):
        cancelled = client.post("/charges/o-1/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        assert cancelled.json()["id"] == "ch_000002"
    assert provider.charge_counts() == {"o-2": 1}
    assert [c.cancelled for c in provider.charges()] == [True, True, False]
    status = client.get("/charges/o-1").json()
    assert (status["status"], status["count"]) == ("cancelled", 2)


def test_a_hung_charge_is_still_made(provider: PaymentProvider, client: httpx.Client) -> None:
    provider.fault(Fault.hang(), Fault.ok())
    with pytest.raises(httpx.ReadTimeout):
        _charge(client, "o-1", key="k-1")
    assert provider.charge_counts() == {"o-1": 1}
    # The customer's retry with the same key learns the outcome; nothing more is charged.
    again = _charge(client, "o-1", key="k-1")
    assert again.status_code == 200
    assert again.json()["id"] == "ch_000001"
    assert provider.charge_counts() == {"o-1": 1}


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        pytest.param(Fault.reset_connection(), httpx.RemoteProtocolError, id="reset"),
        pytest.param(Fault.latency(3.0), httpx.ReadTimeout, id="latency"),
    ],
)
def test_a_charge_whose_answer_is_lost_is_still_made(
    provider: PaymentProvider,
    client: httpx.Client,
    fault: Fault,
    error: type[Exception],
) -> None:
    provider.fault(fault)
    with pytest.raises((error, httpx.ReadError)):
        _charge(client, "o-1")
    assert provider.charge_counts() == {"o-1": 1}


def test_a_slow_charge_is_answered_after_its_latency(
    provider: PaymentProvider, client: httpx.Client
) -> None:
    provider.fault(Fault.latency(0.2))
    response = _charge(client, "o-1")
    assert response.status_code == 201
    assert response.elapsed.total_seconds() >= 0.2
    assert response.json()["order_id"] == "o-1"


def test_an_error_charges_nothing(provider: PaymentProvider, client: httpx.Client) -> None:
    provider.fault(Fault.error(500), Fault.error(503, retry_after=2), Fault.ok())
    first = _charge(client, "o-1", key="k-1")
    second = _charge(client, "o-1", key="k-1")
    assert first.status_code == 500
    assert first.json() == {"error": "internal server error"}
    assert (second.status_code, second.headers["retry-after"]) == (503, "2")
    assert provider.charges() == []
    assert client.get("/charges/o-1").status_code == 404
    # The third attempt with the same key is the first to charge.
    assert _charge(client, "o-1", key="k-1").status_code == 201
    assert provider.charge_counts() == {"o-1": 1}


def test_checks_and_cancels_have_scripts_of_their_own(
    provider: PaymentProvider, client: httpx.Client
) -> None:
    provider.check_fault(Fault.error(503), Fault.ok())
    provider.cancel_fault(Fault.error(500), Fault.hang())
    assert _charge(client, "o-1").status_code == 201  # the charge script is untouched
    assert client.get("/charges/o-1").status_code == 503
    assert client.get("/charges/o-1").status_code == 200
    assert client.post("/charges/o-1/cancel").status_code == 500
    assert provider.charge_counts() == {"o-1": 1}  # a failed cancel refunds nothing
    with pytest.raises(httpx.ReadTimeout):
        client.post("/charges/o-1/cancel")
    assert provider.charge_counts() == {}  # a hung cancel is made all the same


def test_the_catalog_and_other_paths(provider: PaymentProvider, client: httpx.Client) -> None:
    items = client.get("/items")
    assert items.status_code == 200
    assert items.headers["content-type"] == "application/json"
    assert {item["sku"] for item in items.json()["items"]} == {"tea", "cup", "pot"}
    provider.route("/items", Fault.error(502), Fault.ok())
    assert client.get("/items").status_code == 502
    assert client.get("/items").json()["items"]
    # Any other path behaves as FaultyUpstream's.
    assert client.get("/other").json() == {"path": "/other", "n": 1}


def test_a_fault_with_a_body_of_its_own_still_charges(
    provider: PaymentProvider, client: httpx.Client
) -> None:
    provider.fault(Fault(status=202, body=b"queued"))
    response = _charge(client, "o-1")
    assert (response.status_code, response.content) == (202, b"queued")
    assert provider.charge_counts() == {"o-1": 1}


def test_reset_forgets_the_ledger_and_the_scripts(
    provider: PaymentProvider, client: httpx.Client
) -> None:
    provider.fault(Fault.error(500), Fault.ok())
    assert _charge(client, "o-1").status_code == 500
    assert _charge(client, "o-1").status_code == 201
    provider.reset()
    assert provider.charges() == []
    assert provider.count() == 0
    assert _charge(client, "o-1").json()["id"] == "ch_000001"


def test_an_order_id_is_url_decoded(provider: PaymentProvider, client: httpx.Client) -> None:
    _charge(client, "order 7/b")
    assert client.get("/charges/order%207%2Fb").json()["order_id"] == "order 7/b"


def test_it_can_be_used_by_the_pytest_fixture(payment_provider: PaymentProvider) -> None:
    with httpx.Client(base_url=payment_provider.url, timeout=TIMEOUT) as client:
        assert _charge(client, "o-1").status_code == 201
    assert payment_provider.charge_counts() == {"o-1": 1}
    assert "PaymentProvider" in repr(payment_provider)


@pytest.mark.anyio
async def test_async_context_manager() -> None:
    async with PaymentProvider() as provider:
        client = httpx.AsyncClient(base_url=provider.url, timeout=TIMEOUT)
        async with client:
            response = await client.post("/charges", json={"order_id": "o-1", "amount": 1})
    assert response.status_code == 201
    assert provider.charge_counts() == {"o-1": 1}
