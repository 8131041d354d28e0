"""Shared state across replicas on Redis: ``Registry(state=RedisState(...))``.

::

    from seawall.redis import RedisState

    registry = seawall.Registry(state=RedisState(url_env="REDIS_URL"))
    registry.add(
        "payments",
        base_url="https://pay.example",
        policy=seawall.Policy(
            shared=seawall.Shared(
                breaker="advisory",
                bulkhead=seawall.GlobalBulkhead(max_concurrent=40),
            )
        ),
    )
    async with registry:  # registers this replica and starts the sync task
        ...

Redis informs decisions; it never blocks a call for long and never fails
one. No call does Redis I/O unless it must refill an empty local pocket of
slots or tokens, and then it waits at most ``budget``. One background task
per registry syncs every ``sync_interval`` in one EVALSHA. See
docs/shared-state.md for what each feature does when Redis is slow, down or
wiped.

asyncio only (``redis.asyncio``): entering the registry under trio raises.
Needs the ``redis`` extra: ``pip install 'seawall[redis]'``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

from ._clock import Clock
from ._config import _raise_if, state_problems
from ._exceptions import ConfigError
from ._shared._lua import Script
from ._shared._state import SharedState
from .telemetry._redact import mask_url

__all__ = ["RedisState"]

#: Connections in the pool seawall builds: the sync, a grant, a release and a
#: reservation per dependency in flight at most, and cache writes.
POOL_SIZE = 16


class RedisState(SharedState):
    """Shared state on Redis, for one registry (``Registry(state=...)``).

    Give the server as ``url`` (``redis://``, ``rediss://``, ``unix://``), as
    the name of an environment variable holding it (``url_env``, read when
    the registry starts), or as a ready ``redis.asyncio`` ``client`` (used as
    is; see docs/shared-state.md for the settings it needs: short socket
    timeouts and no retries).

    * ``namespace``: keys live under the hash tag ``{seawall:<namespace>}``.
    * ``budget``: the longest a call waits on Redis (for a grant, a
      reservation or a cache read), in seconds; past it the call goes on with
      local state.
    * ``sync_interval``: seconds between syncs; ``lease_ttl``: a replica
      silent that long is swept, its slots freed.
    * ``command_timeout``: the socket and connect timeouts of the client
      seawall builds.
    * ``cache_secret``: keys the shared cache entries of requests carrying
      credentials (HMAC-SHA256); without it such responses are not shared.
    * ``time``: ``"server"`` (Redis ``TIME``, immune to clock skew) or
      ``"client"`` (``clock``, for tests that move time by hand).

    The URL's password never appears in logs, spans, snapshots or ``repr()``.
    """

    backend = "redis"

    def __init__(
        self,
        url: str | None = None,
        *,
        url_env: str | None = None,
        client: Any = None,
        namespace: str = "seawall",
        budget: float = 0.010,
        sync_interval: float = 0.25,
        command_timeout: float = 0.25,
        lease_ttl: float = 5.0,
        cache_secret: str | bytes | None = None,
        time: Literal["server", "client"] = "server",
        clock: Clock | None = None,
    ) -> None:
        problems = state_problems(
            namespace=namespace,
            budget=budget,
            sync_interval=sync_interval,
            command_timeout=command_timeout,
            lease_ttl=lease_ttl,
        )
        given = [name for name, v in (("url", url), ("url_env", url_env), ("client", client)) if v]
        if len(given) != 1:
            problems.append(("url", "give one of url, url_env or client", ", ".join(given) or None))
        if url is not None and (
            not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://"))
        ):
            problems.append(("url", "must be a redis://, rediss:// or unix:// URL", url))
        if url_env is not None and (not isinstance(url_env, str) or not url_env):
            problems.append(("url_env", "must be an environment variable name", url_env))
        if cache_secret is not None and (
            not isinstance(cache_secret, str | bytes) or len(cache_secret) < 16
        ):
            problems.append(
                ("cache_secret", "must be a string of at least 16 characters", "[secret]")
            )
        if client is not None and _decodes(client):
            problems.append(
                (
                    "client",
                    "must return bytes (decode_responses=False): the scripts reply in binary",
                    "decode_responses=True",
                )
            )
        if time not in ("server", "client"):
            problems.append(("time", "must be 'server' or 'client'", time))
        if clock is not None and not (hasattr(clock, "now") and hasattr(clock, "sleep")):
            problems.append(("clock", "must be a seawall.Clock", clock))
        _raise_if("RedisState", problems)
        super().__init__(
            namespace=namespace,
            budget=float(budget),
            sync_interval=float(sync_interval),
            command_timeout=float(command_timeout),
            lease_ttl=float(lease_ttl),
            time_source=time,
            clock=clock,
        )
        self._url = url
        self._url_env = url_env
        self._client_given = client
        self._client: Any = client
        self._owned = False
        self.cache_secret = cache_secret.encode() if isinstance(cache_secret, str) else cache_secret

    @classmethod
    def from_settings(cls, settings: Any, *, clock: Clock | None = None) -> RedisState:
        """From a configuration file's ``[state]`` table (:class:`seawall._config.StateSettings`)."""
        secret = None
        if settings.cache_secret_env:
            secret = os.environ.get(settings.cache_secret_env) or None
        return cls(
            url_env=settings.url_env or "REDIS_URL",
            namespace=settings.namespace,
            budget=settings.budget,
            sync_interval=settings.sync_interval,
            command_timeout=settings.command_timeout,
            lease_ttl=settings.lease_ttl,
            cache_secret=secret,
            clock=clock,
        )

    def __repr__(self) -> str:
        if self._client_given is not None:
            where = f"client={type(self._client_given).__name__}"
        elif self._url is not None:
            where = f"url={mask_url(self._url)!r}"
        else:
            where = f"url_env={self._url_env!r}"
        return (
            f"RedisState({where}, namespace={self.namespace!r}, status={self.status!r}, "
            f"replica={self.replica!r})"
        )

    @property
    def client(self) -> Any:
        """The ``redis.asyncio`` client in use (None before the registry starts)."""
        return self._client

    # -- the backend's part ----------------------------------------------------------

    async def _open(self) -> None:
        if self._client_given is not None:
            self._client = self._client_given
            return
        url = self._url
        if url is None:
            url = os.environ.get(self._url_env or "")
            if not url:
                raise ConfigError(
                    [f"RedisState.url_env: the environment variable {self._url_env!r} is not set"]
                )
        try:
            from redis.asyncio import BlockingConnectionPool, Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError as exc:  # pragma: no cover - the extra is missing
            raise ImportError(
                "seawall.redis needs redis-py 8: pip install 'seawall[redis]'"
            ) from exc
        timeout = self.command_timeout
        # redis-py's defaults (5 s timeouts, retries with backoff) would make
        # a hung Redis cost seconds per operation: short timeouts, no retry,
        # and no CLIENT SETINFO round trip on each new connection.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=POOL_SIZE,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            driver_info=None,
        )
        self._client = Redis.from_pool(pool)  # closing the client closes the pool
        self._owned = True

    async def _close(self) -> None:
        client, self._client = self._client, self._client_given
        if self._owned and client is not None:
            self._owned = False
            await client.aclose()

    async def _eval(self, script: Script, args: Sequence[str | int | float | bytes]) -> Any:
        from redis.exceptions import NoScriptError

        client = self._client
        try:
            return await client.evalsha(script.sha, 1, self.prefix, *args)
        except NoScriptError:
            # A restarted (or SCRIPT FLUSHed) server: load it again, once; it may
            # be another build (failover): ask again whether it has GCRA.
            await client.script_load(script.source)
            self._probe_due = self._probe_due or script.name != "probe"
            return await client.evalsha(script.sha, 1, self.prefix, *args)

    async def _gcra(self, key: str, max_burst: int, period: float, tokens: int) -> list[Any]:
        reply: list[Any] = await self._client.execute_command(
            "GCRA", key, max_burst, 1, repr(period), "TOKENS", tokens
        )
        return reply

    async def _cache_put(self, batch: list[tuple[str, bytes]], ttl_ms: int) -> None:
        pipe = self._client.pipeline(transaction=False)
        for key, value in batch:
            pipe.set(key, value, px=ttl_ms)
        await pipe.execute()

    async def _cache_get(self, key: str) -> tuple[bytes | None, int]:
        pipe = self._client.pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        value, pttl = await pipe.execute()
        return value, int(pttl)


def _decodes(client: Any) -> bool:
    """Whether a redis-py client decodes its replies (``decode_responses=True``)."""
    try:
        return bool(client.get_connection_kwargs().get("decode_responses"))
    except Exception:  # not a redis-py client: it is the caller's to get right
        return False
