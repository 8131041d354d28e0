"""seawall for stripe: a ``stripe.HTTPClient`` over any async httpx client.

stripe's own async client (``stripe.HTTPXClient``) builds its httpx client
itself and takes none from you; :class:`StripeHTTPClient` sends stripe's
requests through the client you give it (a :class:`seawall.ResilientClient`),
with public names only::

    import seawall
    from seawall.stripe import stripe_client

    payments = seawall.ResilientClient("stripe", policy=policy)
    sc = stripe_client("sk_live_...", payments)
    customer = await sc.v1.customers.create_async({"email": "ada@example.com"})

seawall is then the one retry layer: :func:`stripe_client` sets
``max_network_retries=0``, and every error of the wrapped client becomes a
``stripe.APIConnectionError`` with ``should_retry=False`` (so no stripe retry
setting resends what seawall decided not to), the original as ``__cause__``:
``seawall.report_of(exc)`` finds the call's report through it. stripe raises
its API errors (``stripe.APIError`` on a 503) with no response object, only
the headers this client returned: those are a :class:`ResponseHeaders`, so
``seawall.report_of(exc.headers)`` finds the report of such a call, and
``seawall.report_of(obj.last_response.headers)`` that of a successful one.

stripe sends an ``Idempotency-Key`` on every POST (the same key on every
resend of one call), which seawall's default ``Policy.idempotency_headers``
reads: a POST to stripe is retried where a GET would be.

Install stripe yourself (``pip install stripe``); this module is the only one
that imports it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, ClassVar, NoReturn, Protocol

import anyio
import stripe

from ._report import CallReport, report_of

__all__ = ["AsyncHTTPClient", "ResponseHeaders", "StripeHTTPClient", "stripe_client"]


class AsyncHTTPClient(Protocol):
    """What :class:`StripeHTTPClient` needs of a client: ``httpx.AsyncClient``,
    ``httpx2.AsyncClient`` and both seawall ``ResilientClient`` classes have it."""

    def build_request(
        self,
        method: str,
        url: str,
        *,
        content: str | bytes | None = ...,
        headers: Mapping[str, str] | None = ...,
    ) -> Any: ...

    async def send(self, request: Any, *, stream: bool = ...) -> Any: ...


class ResponseHeaders(Mapping[str, str]):
    """A response's headers (case-insensitive, read-only) and its seawall report.

    stripe keeps the headers an HTTP client returns, on its response objects
    (``obj.last_response.headers``) and on its errors (``exc.headers``), and
    nothing else of the response; ``report`` is what ``seawall.report_of``
    reads there.
    """

    __slots__ = ("_headers", "report")

    def __init__(self, headers: Mapping[str, str], report: CallReport | None) -> None:
        self._headers = headers
        #: The :class:`~seawall.CallReport` of the call, or None (a client without seawall).
        self.report = report

    def __getitem__(self, name: str) -> str:
        return self._headers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers)

    def __len__(self) -> int:
        return len(self._headers)

    def __repr__(self) -> str:
        return f"ResponseHeaders({dict(self._headers)!r})"


class StripeHTTPClient(stripe.HTTPClient):
    """A ``stripe.HTTPClient`` that sends every request through *client*.

    Pass it as ``stripe.StripeClient(..., http_client=StripeHTTPClient(client),
    max_network_retries=0)``, or let :func:`stripe_client` do it. Async only
    (the ``*_async`` methods of stripe's services).

    - The timeouts are *client*'s (a ResilientClient's come from its policy);
      stripe's own 80 s request timeout is not applied.
    - Any ``Exception`` of *client* (seawall's ``CircuitOpenError``,
      ``OutcomeUnknownError``, ``DeadlineExceededError``, an httpx error)
      becomes ``stripe.APIConnectionError(should_retry=False)`` raised from
      it; cancellation passes through untouched.
    - Closing does not close *client*: it belongs to whoever made it (your
      ``async with``, or the Registry).
    """

    name: ClassVar[str] = "seawall"

    def __init__(self, client: AsyncHTTPClient) -> None:
        super().__init__()
        self._http = client

    @property
    def client(self) -> AsyncHTTPClient:
        """The client every request goes through."""
        return self._http

    async def request_async(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        post_data: str | bytes | None = None,
    ) -> tuple[bytes, int, ResponseHeaders]:
        response = await self._send(method, url, headers, post_data, stream=False)
        return response.content, response.status_code, _headers_of(response)

    async def request_stream_async(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        post_data: str | bytes | None = None,
    ) -> tuple[AsyncIterator[bytes], int, ResponseHeaders]:
        response = await self._send(method, url, headers, post_data, stream=True)
        return _body(response), response.status_code, _headers_of(response)

    def sleep_async(self, secs: float) -> Awaitable[None]:
        # Only stripe's own retries sleep (never, with max_network_retries=0).
        return anyio.sleep(secs)

    async def close_async(self) -> None:
        return None

    def close(self) -> None:
        return None

    def request(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise RuntimeError(_SYNC)

    def request_stream(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise RuntimeError(_SYNC)

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        post_data: str | bytes | None,
        *,
        stream: bool,
    ) -> Any:
        client = self._http
        request = client.build_request(method, url, headers=headers, content=post_data or None)
        try:
            return await client.send(request, stream=stream)
        except Exception as exc:
            raise _connection_error(exc) from exc


# stripe's __init__ is unannotated; its class, typed for mypy --strict.
_APIConnectionError: Callable[..., stripe.APIConnectionError] = stripe.APIConnectionError

_SYNC = (
    "seawall.stripe.StripeHTTPClient is async only: call the *_async methods "
    "(sc.v1.customers.create_async(...))"
)


def _connection_error(exc: Exception) -> stripe.APIConnectionError:
    """stripe's error for a failed request; never retried by stripe: seawall decided already."""
    return _APIConnectionError(
        f"request through seawall failed: {type(exc).__name__}: {exc}", should_retry=False
    )


def _headers_of(response: Any) -> ResponseHeaders:
    return ResponseHeaders(response.headers, report_of(response))


async def _body(response: Any) -> AsyncIterator[bytes]:
    """A streamed body, its response closed at the end (or when abandoned)."""
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    except Exception as exc:
        raise _connection_error(exc) from exc
    finally:
        await response.aclose()


def stripe_client(api_key: str, client: AsyncHTTPClient, **options: Any) -> stripe.StripeClient:
    """A ``stripe.StripeClient`` that sends through *client*, with stripe's retries off.

    *options* are ``stripe.StripeClient``'s other keywords (``base_addresses``,
    ``stripe_account``, ``stripe_version``...). ``http_client`` and
    ``max_network_retries`` are this function's to set: giving them raises
    ``TypeError``.
    """
    for name in ("http_client", "max_network_retries"):
        if name in options:
            raise TypeError(
                f"stripe_client: {name} is set by seawall (StripeHTTPClient, and 0: "
                "seawall is the one retry layer, see Policy.retry)"
            )
    return stripe.StripeClient(
        api_key, http_client=StripeHTTPClient(client), max_network_retries=0, **options
    )
