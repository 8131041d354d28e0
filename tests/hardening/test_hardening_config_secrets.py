"""No secret in a ConfigError line or in a repr() (issue 12, item 2).

ConfigError lines name the key and print ``[secret]`` for header, cookie, auth
and query-parameter values; URL passwords show as ``[secure]``, as httpx shows
them; ``repr()`` of DependencySpec, Config and ResilientClient follows suit.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

import seawall
from seawall import Config, ConfigError, DependencySpec, Policy, ResilientClient, load_config

SECRET = "S3CRET"
URL = f"https://alice:{SECRET}@pay.example/v1"


def problems(data: dict[str, Any]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as excinfo:
        Config.from_mapping(data)
    assert SECRET not in str(excinfo.value)
    return excinfo.value.problems


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        pytest.param(
            {"headers": {"Authorization": f"Bearer {SECRET}", "X-Retries": 3}},
            "dependencies.pay.headers: must be a table of strings, got [secret]",
            id="headers",
        ),
        pytest.param(
            {"cookies": {"session": SECRET, "n": 1}},
            "dependencies.pay.cookies: must be a table of strings, got [secret]",
            id="cookies",
        ),
        pytest.param(
            {"auth": ["alice", SECRET, "extra"]},
            "dependencies.pay.auth: must be a list [username, password], got [secret]",
            id="auth",
        ),
        pytest.param(
            {"params": f"api_key={SECRET}"},
            "dependencies.pay.params: must be a table, got [secret]",
            id="params",
        ),
        pytest.param(
            {"cert": ["c.pem", "k.pem", SECRET, "extra"]},
            "dependencies.pay.cert: must be a path or a list [certfile, keyfile] or"
            " [certfile, keyfile, password], got ['c.pem', 'k.pem', [secret], [secret]]",
            id="cert-password",
        ),
        pytest.param(
            {"header": {"Authorization": SECRET}},
            "dependencies.pay.header: unknown key, got [secret]",
            id="misspelt-headers",
        ),
        pytest.param(
            {"api_token": SECRET},
            "dependencies.pay.api_token: unknown key, got [secret]",
            id="unknown-secret-key",
        ),
        pytest.param(
            {"retry": {"extra": {"password": SECRET, "tries": 2}}},
            "dependencies.pay.retry.extra: unknown key, got {'password': [secret], 'tries': 2}",
            id="nested-secret-key",
        ),
    ],
)
def test_config_error_hides_secret_values(table: dict[str, Any], expected: str) -> None:
    found = problems({"dependencies": {"pay": {"base_url": "https://pay.example", **table}}})
    assert found == (expected,)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        pytest.param(
            {"base_url": f"https://alice:{SECRET}@pay example"},
            "dependencies.pay.base_url: must be a URL without spaces or control characters,"
            " got 'https://alice:[secure]@pay example'",
            id="base_url",
        ),
        pytest.param(
            {"endpoints": [URL, f"ftp://bob:{SECRET}@b.example"]},
            "dependencies.pay.endpoints[1]: must be an http:// or https:// URL,"
            " got 'ftp://bob:[secure]@b.example'",
            id="endpoint",
        ),
        pytest.param(
            {"base_url": URL, "endpoints": [URL]},
            "dependencies.pay.endpoints: set base_url or endpoints, not both,"
            " got ['https://alice:[secure]@pay.example/v1']",
            id="both",
        ),
    ],
)
def test_config_error_masks_url_passwords(table: dict[str, Any], expected: str) -> None:
    assert problems({"dependencies": {"pay": table}}) == (expected,)


def test_load_config_hides_secrets_too(tmp_path: Path) -> None:
    path = tmp_path / "seawall.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            [dependencies.pay]
            base_url = "https://alice:{SECRET}@pay.example:99999"
            headers = {{ Authorization = "Bearer {SECRET}", X-Id = 1 }}
            cookies = {{ session = ["{SECRET}"] }}
            """
        ),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert SECRET not in str(excinfo.value)
    assert excinfo.value.problems == (
        "dependencies.pay.headers: must be a table of strings, got [secret]",
        "dependencies.pay.cookies: must be a table of strings, got [secret]",
        "dependencies.pay.base_url: must be a URL with a port in 1..65535,"
        " got 'https://alice:[secure]@pay.example:99999'",
    )


def test_dependency_spec_error_masks_the_url() -> None:
    with pytest.raises(ConfigError) as excinfo:
        DependencySpec(name="pay", policy=Policy(), base_url=f"https://alice:{SECRET}@")
    assert excinfo.value.problems == (
        "DependencySpec.base_url: must be a URL with a host, got 'https://alice:[secure]@'",
    )


# ---------------------------------------------------------------------------
# repr()


def spec_with_credentials() -> DependencySpec:
    return DependencySpec(
        name="pay",
        policy=Policy(),
        endpoints=(URL, "https://b.example"),
        httpx_options={
            "headers": {"Authorization": f"Bearer {SECRET}", "X-Api-Key": SECRET},
            "cookies": {"session": SECRET},
            "auth": ("alice", SECRET),
            "params": {"api_key": SECRET},
            "cert": ("c.pem", "k.pem", SECRET),
            "proxy": f"http://proxy:{SECRET}@proxy.example:3128",
            "verify": False,
        },
    )


def test_dependency_spec_repr_shows_no_credential() -> None:
    shown = repr(spec_with_credentials())
    assert SECRET not in shown
    assert "endpoints=('https://alice:[secure]@pay.example/v1', 'https://b.example')" in shown
    assert "'headers': {'Authorization': [secret], 'X-Api-Key': [secret]}" in shown
    assert "'cookies': {'session': [secret]}" in shown
    assert "'auth': [secret]" in shown
    assert "'params': {'api_key': [secret]}" in shown
    assert "'cert': ('c.pem', 'k.pem', [secret])" in shown
    assert "'proxy': 'http://proxy:[secure]@proxy.example:3128'" in shown
    assert "'verify': False" in shown


def test_dependency_spec_repr_of_a_base_url() -> None:
    spec = DependencySpec(name="pay", policy=Policy(), base_url=URL)
    assert "base_url='https://alice:[secure]@pay.example/v1'" in repr(spec)
    assert SECRET not in repr(spec)


def test_config_repr_shows_no_credential() -> None:
    config = Config(defaults=Policy(), dependencies={"pay": spec_with_credentials()})
    assert SECRET not in repr(config)
    assert "[secure]" in repr(config)
    loaded = Config.from_mapping(
        {
            "dependencies": {
                "pay": {
                    "base_url": URL,
                    "headers": {"Authorization": SECRET},
                    "auth": ["alice", SECRET],
                }
            }
        }
    )
    assert SECRET not in repr(loaded)
    assert SECRET not in str(loaded)


def test_registry_built_specs_show_no_credential() -> None:
    registry = seawall.Registry()
    registry.add("pay", base_url=URL, headers={"Authorization": SECRET}, auth=("a", SECRET))
    assert SECRET not in repr(registry.spec("pay"))


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"base_url": URL}, id="base_url"),
        pytest.param({"endpoints": [URL, "https://b.example"]}, id="endpoints"),
    ],
)
def test_resilient_client_repr_masks_the_password(kwargs: dict[str, Any]) -> None:
    client = ResilientClient("pay", transport=httpx.MockTransport(httpx.Response), **kwargs)
    shown = repr(client)
    assert SECRET not in shown
    assert shown.startswith("<ResilientClient 'pay' base_url='https://alice:[secure]@pay.example")
