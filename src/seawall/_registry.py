"""Registry: the named dependencies of a process, their clients and runtime state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from http.cookiejar import CookieJar, DefaultCookiePolicy
from os import PathLike
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx
import sniffio
import structlog

from ._clock import MONOTONIC, Clock
from ._config import Config, DependencySpec, Policy, StateSettings, load_config
from ._exceptions import ConfigError
from ._runtime import Runtime

if TYPE_CHECKING:
    from ._breaker import Breaker
    from ._bulkhead import BulkheadHandle
    from ._client import ResilientClient
    from ._guard import Guard
    from ._shared import SharedState

__all__ = ["Registry", "default_registry"]

_logger = structlog.get_logger("seawall")

# httpx keywords that configure a connection pool: they cannot apply to a
# transport given in code (ResilientClient refuses them too).
_CONNECTION_OPTIONS = frozenset({"verify", "cert", "http1", "http2", "proxy", "trust_env"})


def redact_url(url: str) -> str:
    """A URL without any ``user:password@``."""
    try:
        parsed = httpx.URL(url)
    except Exception:  # pragma: no cover - validated URLs only reach here
        return "<invalid url>"
    if parsed.userinfo:
        parsed = parsed.copy_with(username=None, password=None)
    return str(parsed)


class _RefuseAll(DefaultCookiePolicy):
    """Sends the cookies set in code or configuration; keeps none that responses set."""

    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False


def _no_store_jar(cookies: object) -> CookieJar:
    """A cookie jar holding *cookies* (a table, or httpx cookies) and nothing more, ever.

    A registry's client serves every user of the process: a jar that kept the
    ``Set-Cookie`` of user A's upstream session would send it on user B's
    requests. Cookies given per request still go out with that request.
    """
    jar = CookieJar(policy=_RefuseAll())
    if cookies is not None:
        httpx.Cookies(jar).update(cookies)  # type: ignore[arg-type]
    return jar


def _spawn(close: Callable[[], Coroutine[Any, Any, None]], tasks: set[asyncio.Task[None]]) -> None:
    """Run *close()* in the background of the running event loop, if there is one.

    Without one (``reload()`` called from sync code or another thread) it does
    not run: the registry's ``aclose()`` closes what is left.
    """
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return
    try:
        if library == "asyncio":
            task = asyncio.get_running_loop().create_task(close())
            tasks.add(task)  # a strong reference until it is done
            task.add_done_callback(tasks.discard)
        elif library == "trio":
            import trio

            trio.lowlevel.spawn_system_task(close)
    except RuntimeError:  # not in the loop's own thread
        return


class _Dependency:
    """One registered dependency: its spec, runtime and (for HTTP ones) client.

    ``transport`` is the transport given in code to ``add()``, if any: reload
    keeps it, where the registry would build a pool of its own.
    """

    __slots__ = ("client", "runtime", "spec", "transport")

    def __init__(
        self,
        spec: DependencySpec,
        runtime: Runtime,
        client: ResilientClient | None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.spec = spec
        self.runtime = runtime
        self.client = client
        self.transport = transport


class Registry:
    """The named dependencies of an app, each with one policy, one runtime state
    and, for HTTP dependencies, one :class:`~seawall.ResilientClient`.

    ::

        registry = seawall.Registry.from_toml("resilience.toml")
        registry.add("payments", base_url="https://pay.example", policy=policy)

        app = FastAPI(lifespan=registry.lifespan)      # or: async with registry: ...
        payments = registry.client("payments")

    ``clock`` is the clock every dependency's state is built on (tests pass a
    :class:`seawall.testing.ManualClock`). ``state`` shares state across
    replicas (``seawall.redis.RedisState``) for the dependencies whose policy
    has a ``shared`` part; entering the registry starts its sync task.
    """

    def __init__(self, *, clock: Clock | None = None, state: SharedState | None = None) -> None:
        self.clock: Clock = clock or MONOTONIC
        self._state = state
        if state is not None:
            state._attach(self)
        self._deps: dict[str, _Dependency] = {}
        # seawall.httpx2 twins of the HTTP dependencies' clients, built on demand.
        self._httpx2: dict[str, Any] = {}
        self._defaults = Policy()
        # The [state] table the registry was built with (None: none): reload()
        # refuses a file whose table differs, for the backend is never swapped.
        self._state_settings: StateSettings | None = None
        # Clients replaced or removed by reload(): each closes its pool as soon
        # as it has no call in flight, and for good when the registry closes.
        self._retired: list[ResilientClient] = []
        self._closing: set[asyncio.Task[None]] = set()
        #: More parts of the snapshot, by key (seawall.outbox adds "outbox"): each
        #: returns JSON-ready figures it already has, never querying anything.
        self.snapshot_parts: dict[str, Callable[[], Any]] = {}

    def __repr__(self) -> str:
        return f"<Registry {sorted(self._deps)}>"

    def __contains__(self, name: object) -> bool:
        return name in self._deps

    @property
    def names(self) -> list[str]:
        return list(self._deps)

    @property
    def state(self) -> SharedState | None:
        """The shared-state backend given as ``state=`` (or by a ``[state]`` table), if any."""
        return self._state

    def _runtimes(self) -> list[Runtime]:
        return [dep.runtime for dep in self._deps.values()]

    # -- building ------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any] | Config,
        *,
        clock: Clock | None = None,
        state: SharedState | None = None,
    ) -> Registry:
        """A registry holding every dependency of a configuration (the TOML layout).

        Its ``[state]`` table, if any, gives the shared-state backend, unless
        ``state`` is given here.
        """
        if not isinstance(config, Config):
            config = Config.from_mapping(config)
        if state is None and config.state is not None:
            from .redis import RedisState

            state = RedisState.from_settings(config.state, clock=clock)
        from ._shared import config_problems

        problems = config_problems(config, state)
        if problems:
            raise ConfigError(problems)
        registry = cls(clock=clock, state=state)
        registry._defaults = config.defaults
        registry._state_settings = config.state
        for spec in config.dependencies.values():
            registry._add_spec(spec)
        return registry

    @classmethod
    def from_toml(
        cls,
        path: str | PathLike[str],
        *,
        clock: Clock | None = None,
        state: SharedState | None = None,
    ) -> Registry:
        """A registry from a TOML file (see ``seawall.load_config``)."""
        return cls.from_config(load_config(path), clock=clock, state=state)

    def add(
        self,
        name: str,
        *,
        base_url: str | None = None,
        endpoints: Sequence[str] | None = None,
        policy: Policy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        **httpx_kwargs: Any,
    ) -> None:
        """Register a dependency: HTTP (``base_url`` or ``endpoints``) or not (neither).

        ``policy`` defaults to the configuration's defaults (``Policy()`` without
        one). httpx keywords (headers, auth, verify, ...) go to its client.

        The client keeps no cookie jar: cookies given here (a table) go out on
        every request, and no ``Set-Cookie`` of a response is ever kept, so no
        user's upstream session reaches another user's requests. To keep
        cookies across requests anyway (one session shared by the whole
        process), pass a ``http.cookiejar.CookieJar`` of your own as
        ``cookies=``. A ``transport`` given here is kept by :meth:`reload`.
        """
        if name in self._deps:
            raise ValueError(f"dependency {name!r} is already registered")
        spec = DependencySpec(
            name=name,
            policy=policy if policy is not None else self._defaults,
            base_url=base_url,
            endpoints=tuple(endpoints or ()),
            httpx_options=dict(httpx_kwargs),
        )
        self._add_spec(spec, transport=transport)

    def _add_spec(
        self,
        spec: DependencySpec,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        if not isinstance(spec.name, str) or not spec.name:
            raise ValueError(f"dependency: must be a non-empty string, got {spec.name!r}")
        if spec.base_url and spec.endpoints:
            raise ValueError(f"dependency {spec.name!r}: give base_url or endpoints, not both")
        if runtime is None:
            runtime = Runtime(
                spec.name, spec.policy, self.clock, endpoints=spec.endpoints, state=self._state
            )
        client = None
        if spec.base_url or spec.endpoints:
            from ._client import ResilientClient

            options = dict(spec.httpx_options)
            if isinstance(options.get("auth"), tuple):
                options["auth"] = httpx.BasicAuth(*options["auth"])
            if not isinstance(options.get("cookies"), CookieJar):  # a jar given in code is kept
                options["cookies"] = _no_store_jar(options.get("cookies"))
            client = ResilientClient(
                spec.name,
                base_url=spec.base_url or "",
                transport=transport,
                runtime=runtime,
                **options,
            )
        kept = transport if client is not None else None
        self._deps[spec.name] = _Dependency(spec, runtime, client, kept)

    def runtime_for(self, name: str, policy: Policy | None, clock: Clock | None) -> Runtime:
        """The live runtime of *name* (``seawall.guard`` uses it), created on first use.

        A conflicting policy or clock is a ValueError; a blank name a ConfigError.
        """
        if not isinstance(name, str) or not name.strip():
            raise ConfigError([f"dependency: must be a non-empty string, got {name!r}"])
        dep = self._deps.get(name)
        if dep is None:
            if policy is None:
                raise LookupError(f"unknown dependency {name!r}: give it a policy first")
            if not isinstance(policy, Policy):
                raise TypeError(f"policy: must be a seawall.Policy, got {policy!r}")
            runtime = Runtime(name, policy, clock or self.clock, state=self._state)
            self._deps[name] = _Dependency(DependencySpec(name=name, policy=policy), runtime, None)
            return runtime
        rt = dep.runtime
        if policy is not None and policy != rt.policy:
            raise ValueError(
                f"dependency {name!r} already has a different policy in this registry; "
                "use another name or the same policy"
            )
        if clock is not None and clock is not rt.clock:
            raise ValueError(f"dependency {name!r} already runs on another clock ({rt.clock!r})")
        return rt

    def _get(self, name: str) -> _Dependency:
        try:
            return self._deps[name]
        except KeyError:
            known = ", ".join(sorted(self._deps)) or "none"
            raise LookupError(f"unknown dependency {name!r} (known: {known})") from None

    # -- handles -------------------------------------------------------------------

    def client(self, name: str) -> ResilientClient:
        """The :class:`~seawall.ResilientClient` of an HTTP dependency."""
        dep = self._get(name)
        if dep.client is None:
            raise LookupError(f"dependency {name!r} has no base_url or endpoints: use guard()")
        return dep.client

    def httpx2_client(self, name: str) -> Any:
        """The dependency's :class:`seawall.httpx2.ResilientClient`, for SDKs built on
        httpx2 (openai, anthropic): built on first use from the same configuration,
        over the same runtime (one breaker, one bulkhead, one budget for both
        clients). Needs ``seawall[httpx2]``. A transport given in code to
        ``add()`` is httpx's and is not used: this client opens its own pool.
        """
        dep = self._get(name)
        if dep.client is None:
            raise LookupError(f"dependency {name!r} has no base_url or endpoints: use guard()")
        twin = self._httpx2.get(name)
        if twin is None or twin.resilient_transport.runtime is not dep.runtime:
            import httpx2

            from .httpx2 import ResilientClient as Httpx2Client

            spec = dep.spec
            options = dict(spec.httpx_options)
            if isinstance(options.get("auth"), tuple):
                options["auth"] = httpx2.BasicAuth(*options["auth"])
            if not isinstance(options.get("cookies"), CookieJar):
                options["cookies"] = _no_store_jar(options.get("cookies"))
            twin = self._httpx2[name] = Httpx2Client(
                name, base_url=spec.base_url or "", runtime=dep.runtime, **options
            )
        return twin

    def guard(self, name: str, policy: Policy | None = None) -> Guard:
        """A :class:`~seawall.Guard` for non-HTTP calls under *name*'s policy and state."""
        from ._guard import Guard

        return Guard(self.runtime_for(name, policy, None))

    def breaker(self, name: str) -> Breaker:
        """The breaker handle of *name* (LookupError if it has none of its own)."""
        rt = self._get(name).runtime
        if rt.breaker is None:
            if rt.endpoint_breakers:
                raise LookupError(
                    f"dependency {name!r} has one breaker per endpoint: use registry.breakers()"
                )
            raise LookupError(f"dependency {name!r} has no circuit breaker in its policy")
        return rt.breaker

    def breakers(self, name: str) -> dict[str, Breaker]:
        """Every breaker of *name*, by endpoint URL (``""`` for a dependency's own)."""
        rt = self._get(name).runtime
        if rt.endpoint_breakers:
            return dict(rt.endpoint_breakers)
        return {"": rt.breaker} if rt.breaker is not None else {}

    def bulkhead(self, name: str) -> BulkheadHandle:
        """The bulkhead handle of *name* (LookupError if it has no bulkhead)."""
        bulkhead = self._get(name).runtime.bulkhead
        if bulkhead is None:
            raise LookupError(f"dependency {name!r} has no bulkhead in its policy")
        return bulkhead

    def spec(self, name: str) -> DependencySpec:
        return self._get(name).spec

    # -- snapshot ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-ready figures for every dependency (no secret ever appears)."""
        snapshot = {"dependencies": {name: self._entry(dep) for name, dep in self._deps.items()}}
        if self._state is not None:
            snapshot["state"] = self._state.snapshot()
        for key, part in self.snapshot_parts.items():
            snapshot[key] = part()
        return snapshot

    def dependency_snapshot(self, name: str) -> dict[str, Any]:
        return self._entry(self._get(name))

    @staticmethod
    def _entry(dep: _Dependency) -> dict[str, Any]:
        entry: dict[str, Any] = dep.runtime.snapshot()
        for ep in entry["endpoints"]:
            ep["url"] = redact_url(ep["url"])
        pool = None
        if dep.client is not None:
            pool = dep.client.resilient_transport.pool_statistics()
        entry["pool"] = pool
        return entry

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Registry:
        if self._state is not None:
            await self._state.start()  # registers this replica, starts the sync task
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every client's connection pool.

        The clients of registered dependencies keep working: only their pools
        are closed, so handles stay valid and a registry entered again (a
        second lifespan, a second test client) opens connections on demand.
        Clients retired by ``reload()`` are closed for good. A shared-state
        backend stops syncing and takes this replica's slots out.
        """
        if self._state is not None:
            await self._state.stop()
        for dep in self._deps.values():
            if dep.client is not None:
                await dep.client.resilient_transport.aclose()
        for twin in self._httpx2.values():
            await twin.resilient_transport.aclose()
        for client in self._retired:
            await client.aclose()
        self._retired.clear()

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """A lifespan for Starlette/FastAPI (``lifespan=registry.lifespan``)."""
        async with self:
            yield

    # -- reload --------------------------------------------------------------------

    def reload(self, config: str | PathLike[str] | Mapping[str, Any] | Config) -> None:
        """Apply a new configuration in place (synchronous; validates it all first).

        Dependencies whose breaker settings (and endpoints) did not change keep
        their breaker state and window; changed ones get a fresh breaker; added
        ones are opened; removed ones are closed once their calls in flight end.
        Dependencies registered in code with ``add()`` or ``guard()`` and absent
        from the file are removed too: the file is the whole truth.

        A dependency whose client must change (URL, httpx options, pool,
        timeouts) gets a new client. A transport given in code to ``add()``
        is kept: the new client wraps the same transport (the file's pool
        settings cannot apply to it), and a file that sets connection options
        for it (``verify``, ``cert``, ``http1``, ``http2``, ``proxy``,
        ``trust_env``) is refused with a ``ConfigError`` before anything
        changes. A retired client closes its pool as soon as it has no call in
        flight: at once if idle (in the background of the running event loop;
        outside one, when the registry closes), else when its last call ends.
        """
        if isinstance(config, Config):
            new = config
        elif isinstance(config, Mapping):
            new = Config.from_mapping(config)
        else:
            new = load_config(config)
        self._check_kept_transports(new)
        from ._shared import config_problems, state_changed

        problems = config_problems(new, self._state)
        if new.state != self._state_settings:  # [state] changed: refused, never ignored
            problems.insert(0, state_changed(self._state_settings, new.state))
        if problems:  # a shared part with no state backend: nothing has changed yet
            raise ConfigError(problems)
        self._defaults = new.defaults
        for name in [n for n in self._deps if n not in new.dependencies]:
            self._retire(self._deps.pop(name))
        for name, spec in new.dependencies.items():
            old = self._deps.get(name)
            if old is None:
                self._add_spec(spec)
                continue
            # In place: guards and clients holding this runtime follow the new
            # policy; unchanged parts keep their state.
            runtime = old.runtime
            runtime.reconfigure(spec.policy, spec.endpoints)
            if old.client is not None and self._same_client(old, spec):
                old.client.resilient_transport.adopt_runtime(runtime)
                old.spec = spec
                continue
            # The client itself must change: a new one on the same runtime.
            self._deps.pop(name)
            kept = old.transport
            if kept is not None and (spec.base_url or spec.endpoints):
                # Around the same transport: the old client must not close it,
                # and handles to it still work until the registry closes.
                self._add_spec(spec, transport=kept, runtime=runtime)
            else:
                self._retire(old)  # closes once its calls end
                self._add_spec(spec, runtime=runtime)

    @staticmethod
    def _same_client(old: _Dependency, spec: DependencySpec) -> bool:
        """Whether *old*'s client can serve *spec* as it is (under the new runtime)."""
        before = old.spec
        return (
            spec.base_url == before.base_url
            and spec.endpoints == before.endpoints
            and dict(spec.httpx_options) == dict(before.httpx_options)
            and spec.policy.timeouts == before.policy.timeouts
            # A transport given in code has no pool of ours to resize.
            and (old.transport is not None or spec.policy.pool == before.policy.pool)
        )

    def _check_kept_transports(self, new: Config) -> None:
        problems = []
        for name, spec in new.dependencies.items():
            old = self._deps.get(name)
            if old is None or old.transport is None or not (spec.base_url or spec.endpoints):
                continue
            clashing = sorted(k for k in spec.httpx_options if k in _CONNECTION_OPTIONS)
            if clashing:
                problems.append(
                    f"dependencies.{name}: {', '.join(clashing)} cannot apply to the transport "
                    "given in code to Registry.add(); remove them from the file, or the "
                    "transport from the code"
                )
        if problems:
            raise ConfigError(problems)

    def _retire(self, dep: _Dependency) -> None:
        client = dep.client
        if client is None:
            return
        self._retired.append(client)
        transport = client.resilient_transport
        transport.retire()  # the last call in flight closes the pool
        if transport.pool_statistics()["in_flight"]:
            return

        async def close() -> None:
            if transport.pool_statistics()["in_flight"]:
                return  # a call through an old handle started since: it closes the pool
            try:
                await transport.aclose()
            except Exception as exc:  # a background task has no one to raise to
                _logger.warning(
                    "seawall.retired_pool_close_failed",
                    dependency=client.dependency,
                    error=type(exc).__name__,
                )

        _spawn(close, self._closing)


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry that ``seawall.guard`` uses when given none."""
    global _default
    if _default is None:
        _default = Registry()
    return _default


def reset_default_registry() -> None:
    """Forget the process-wide registry (for tests)."""
    global _default
    _default = None
