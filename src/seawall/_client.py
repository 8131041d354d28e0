"""ResilientClient: an httpx.AsyncClient whose every request goes through a policy."""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any, cast

import httpx

from ._breaker import Breaker
from ._bulkhead import BulkheadHandle
from ._clock import MONOTONIC, Clock
from ._compat import environment_proxies
from ._config import Policy
from ._http import Flavor
from ._runtime import Runtime
from ._transport import HTTPX, ResilientTransport, TransportCore

__all__ = ["ResilientClient"]

# Keywords that configure the connection layer: they go to the inner transport,
# since httpx ignores them on a client given a transport of its own.
_TRANSPORT_KWARGS = ("verify", "cert", "http1", "http2", "proxy", "trust_env")


def _pooled_transport(flavor: Flavor, policy: Policy, kwargs: dict[str, Any]) -> Any:
    """The dependency's own pool; environment proxies routed as httpx would route them."""
    x = flavor.x
    pool = policy.pool
    limits = x.Limits(
        max_connections=pool.max_connections,
        max_keepalive_connections=pool.max_keepalive,
        keepalive_expiry=pool.keepalive_expiry,
    )
    direct = x.AsyncHTTPTransport(limits=limits, **kwargs)
    if kwargs.get("proxy") is not None or not kwargs.get("trust_env", True):
        return direct
    proxies = environment_proxies(x)
    if not proxies:
        return direct
    # httpx mounts proxy transports beside the client's transport; here they go
    # underneath the policy instead, so no request bypasses it.
    options = {k: v for k, v in kwargs.items() if k != "trust_env"}
    mounts = sorted(
        (
            pattern,
            None if url is None else x.AsyncHTTPTransport(limits=limits, proxy=url, **options),
        )
        for pattern, url in proxies
    )
    router = _router_class(x)
    return router(direct, mounts)


class _ProxyRouting:
    """Sends each request direct or through the proxy its URL matches (HTTP_PROXY, NO_PROXY, ...)."""

    def __init__(self, direct: Any, mounts: list[tuple[Any, Any]]) -> None:
        self.direct = direct
        self.mounts = mounts
        self._pool = direct._pool  # pool statistics read the direct pool

    async def handle_async_request(self, request: Any) -> Any:
        for pattern, transport in self.mounts:
            if pattern.matches(request.url):
                return await (transport or self.direct).handle_async_request(request)
        return await self.direct.handle_async_request(request)

    async def aclose(self) -> None:
        await self.direct.aclose()
        for _, transport in self.mounts:
            if transport is not None:
                await transport.aclose()


_routers: dict[str, type] = {}


def _router_class(x: ModuleType) -> type:
    router = _routers.get(x.__name__)
    if router is None:
        router = _routers[x.__name__] = type(
            "ProxyRouter", (_ProxyRouting, x.AsyncBaseTransport), {}
        )
    return router


class ClientCore:
    """ResilientClient's whole body, for any flavor of httpx (see ``seawall.httpx2``)."""

    _flavor: Flavor = HTTPX
    _transport_class: Any = ResilientTransport

    def __init__(
        self,
        dependency: str,
        *,
        policy: Policy | None = None,
        base_url: Any = "",
        endpoints: Sequence[str] | None = None,
        transport: Any = None,
        clock: Clock | None = None,
        runtime: Runtime | None = None,
        **httpx_kwargs: Any,
    ) -> None:
        if endpoints is not None and base_url:
            raise ValueError("ResilientClient: give base_url or endpoints, not both")
        if endpoints is not None and (isinstance(endpoints, str) or not endpoints):
            raise ValueError(
                f"ResilientClient.endpoints: must be a non-empty list, got {endpoints!r}"
            )
        if runtime is None:
            runtime = Runtime(
                dependency, policy or Policy(), clock or MONOTONIC, endpoints=endpoints or ()
            )
        policy = runtime.policy
        transport_kwargs = {k: httpx_kwargs.pop(k) for k in _TRANSPORT_KWARGS if k in httpx_kwargs}
        if "limits" in httpx_kwargs:
            raise ValueError(
                "ResilientClient: set the pool size with Policy(pool=seawall.Pool(...))"
            )
        if "timeout" in httpx_kwargs:
            raise ValueError(
                "ResilientClient: set timeouts with Policy(timeouts=seawall.Timeouts(...))"
            )
        if transport is None:
            transport = _pooled_transport(self._flavor, policy, transport_kwargs)
        elif transport_kwargs:
            names = ", ".join(sorted(transport_kwargs))
            raise ValueError(f"ResilientClient: {names} cannot apply to a transport you passed in")
        self._seawall: TransportCore = self._transport_class(
            dependency, transport=transport, runtime=runtime, endpoints=runtime.endpoints
        )
        t = policy.timeouts
        super().__init__(  # type: ignore[call-arg]
            base_url=base_url or (runtime.endpoints[0] if runtime.endpoints else ""),
            transport=self._seawall,
            timeout=self._flavor.x.Timeout(
                connect=t.connect, read=t.read, write=t.write, pool=t.pool
            ),
            trust_env=False,
            **httpx_kwargs,
        )

    def __repr__(self) -> str:
        # httpx's own masking: the password of the URL shows as [secure].
        from .telemetry._redact import mask_url

        return f"<ResilientClient {self.dependency!r} base_url={mask_url(str(cast(Any, self).base_url))!r}>"

    # -- handles -----------------------------------------------------------------

    @property
    def dependency(self) -> str:
        return self._seawall.dependency

    @property
    def policy(self) -> Policy:
        return self._seawall.policy

    @property
    def resilient_transport(self) -> Any:
        return self._seawall

    @property
    def breaker(self) -> Breaker:
        """The dependency's breaker handle.

        With ``endpoints`` each endpoint has its own: see :attr:`breakers`.
        """
        rt = self._seawall.runtime
        if rt.breaker is None:
            if rt.endpoint_breakers:
                raise LookupError(
                    f"{self.dependency!r} has one breaker per endpoint: use client.breakers"
                )
            raise LookupError(f"{self.dependency!r} has no circuit breaker in its policy")
        return rt.breaker

    @property
    def breakers(self) -> dict[str, Breaker]:
        """Every breaker of the dependency, by endpoint URL (one entry, ``""``, without endpoints)."""
        rt = self._seawall.runtime
        if rt.endpoint_breakers:
            return dict(rt.endpoint_breakers)
        return {"": rt.breaker} if rt.breaker is not None else {}

    @property
    def bulkhead(self) -> BulkheadHandle:
        """The dependency's bulkhead handle."""
        bulkhead = self._seawall.runtime.bulkhead
        if bulkhead is None:
            raise LookupError(f"{self.dependency!r} has no bulkhead in its policy")
        return bulkhead

    # -- idempotency keys and streaming ----------------------------------------------

    @staticmethod
    def _keyed(kwargs: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
        if idempotency_key is not None:
            kwargs["extensions"] = {
                **(kwargs.get("extensions") or {}),
                "idempotency_key": idempotency_key,
            }
        return kwargs

    async def send(self, request: Any, *, stream: bool = False, **kwargs: Any) -> Any:
        # The transport buffers bodies inside the attempt (so the attempt
        # timeout covers them) except for streamed responses.
        request.extensions["seawall.stream"] = stream
        return await cast(Any, super()).send(request, stream=stream, **kwargs)

    async def request(
        self,
        method: str,
        url: Any,
        *,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        return await cast(Any, super()).request(method, url, **self._keyed(kwargs, idempotency_key))

    def stream(
        self,
        method: str,
        url: Any,
        *,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        return cast(Any, super()).stream(method, url, **self._keyed(kwargs, idempotency_key))

    async def post(self, url: Any, *, idempotency_key: str | None = None, **kwargs: Any) -> Any:
        return await cast(Any, super()).post(url, **self._keyed(kwargs, idempotency_key))

    async def put(self, url: Any, *, idempotency_key: str | None = None, **kwargs: Any) -> Any:
        return await cast(Any, super()).put(url, **self._keyed(kwargs, idempotency_key))

    async def patch(self, url: Any, *, idempotency_key: str | None = None, **kwargs: Any) -> Any:
        return await cast(Any, super()).patch(url, **self._keyed(kwargs, idempotency_key))

    async def delete(self, url: Any, *, idempotency_key: str | None = None, **kwargs: Any) -> Any:
        return await cast(Any, super()).delete(url, **self._keyed(kwargs, idempotency_key))


class ResilientClient(ClientCore, httpx.AsyncClient):
    """An ``httpx.AsyncClient`` for one named dependency, protected by a policy.

    The whole httpx API keeps working (``get``, ``post``, ``stream``, auth,
    event hooks); every request goes through a :class:`ResilientTransport`.
    httpx's connect/read/write/pool timeouts and pool limits come from the
    policy. ``post``, ``put``, ``patch``, ``delete``, ``request`` and ``stream``
    take ``idempotency_key=``, which sets the ``Idempotency-Key`` header and
    makes the request safe to retry after it was sent.

    ``endpoints`` (in place of ``base_url``) lists redundant providers; each
    has its own breaker and retries fail over between them.

    Environment proxies are applied to the inner transport, never mounted
    beside it, so no request can bypass the policy.
    """
