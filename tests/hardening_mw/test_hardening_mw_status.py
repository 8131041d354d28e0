"""Item 16: the status app's auth scheme is case-insensitive; its errors echo no token."""

from __future__ import annotations

import pytest
from hardening_mw_support import asgi_client

import seawall
from seawall.asgi import status_app
from seawall.testing import FaultyUpstream

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-admin-token"


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        pytest.param(f"Bearer {TOKEN}", 200, id="Bearer"),
        pytest.param(f"bearer {TOKEN}", 200, id="bearer"),
        pytest.param(f"BEARER {TOKEN}", 200, id="BEARER"),
        pytest.param(f"bEaReR   {TOKEN}", 200, id="spaces"),
        pytest.param(f"Bearer {TOKEN.upper()}", 401, id="token-is-case-sensitive"),
        pytest.param(f"Basic {TOKEN}", 401, id="other-scheme"),
        pytest.param("Bearer", 401, id="no-token"),
        pytest.param("Bearer ", 401, id="blank-token"),
        pytest.param(TOKEN, 401, id="no-scheme"),
        pytest.param(f"Bearer {TOKEN}x", 401, id="longer"),
    ],
)
async def test_the_auth_scheme_is_case_insensitive(
    upstream: FaultyUpstream, authorization: str, status: int
) -> None:
    registry = seawall.Registry()
    registry.add("payments", base_url=upstream.url)
    app = status_app(registry, admin_token=TOKEN)
    async with asgi_client(app) as client:
        response = await client.post(
            "/payments/breaker/force-open", headers={"Authorization": authorization}
        )
    assert response.status_code == status
    opened = registry.breaker("payments").state == seawall.BreakerState.FORCED_OPEN
    assert opened is (status == 200)


@pytest.mark.parametrize("token", ["", "   ", "\t\n"], ids=repr)
def test_a_blank_admin_token_is_refused_without_an_empty_quote(token: str) -> None:
    with pytest.raises(ValueError, match="admin_token") as info:
        status_app(seawall.Registry(), admin_token=token)
    assert "got ''" not in str(info.value)
    assert "blank" in str(info.value)


def test_a_token_with_a_newline_is_refused_and_not_echoed() -> None:
    with pytest.raises(ValueError, match="whitespace") as info:
        status_app(seawall.Registry(), admin_token=TOKEN + "\n")
    assert TOKEN not in str(info.value)


def test_a_token_of_another_type_is_refused_by_type_name() -> None:
    with pytest.raises(ValueError, match="got bytes"):
        status_app(seawall.Registry(), admin_token=TOKEN.encode())  # type: ignore[arg-type]
