"""Registry: the named dependencies of a process and their runtime state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._clock import MONOTONIC, Clock
from ._config import Policy
from ._runtime import Runtime

if TYPE_CHECKING:
    from ._breaker import Breaker
    from ._bulkhead import BulkheadHandle
    from ._guard import Guard

__all__ = ["Registry", "default_registry"]


class Registry:
    """Named dependencies, each with one policy and one runtime state.

    ``clock`` is the clock every dependency's state is built on (tests pass a
    :class:`seawall.testing.ManualClock`).
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or MONOTONIC
        self._runtimes: dict[str, Runtime] = {}

    def __repr__(self) -> str:
        return f"<Registry {sorted(self._runtimes)}>"

    def __contains__(self, name: object) -> bool:
        return name in self._runtimes

    @property
    def names(self) -> list[str]:
        return list(self._runtimes)

    def _runtime(self, name: str, policy: Policy | None, clock: Clock | None) -> Runtime:
        """Get or create the runtime of *name*; a conflicting policy or clock is an error."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"dependency: must be a non-empty string, got {name!r}")
        rt = self._runtimes.get(name)
        if rt is None:
            if policy is None:
                raise LookupError(f"unknown dependency {name!r}: give it a policy first")
            if not isinstance(policy, Policy):
                raise TypeError(f"policy: must be a seawall.Policy, got {policy!r}")
            rt = self._runtimes[name] = Runtime(name, policy, clock or self.clock)
            return rt
        if policy is not None and policy != rt.policy:
            raise ValueError(
                f"dependency {name!r} already has a different policy in this registry; "
                "use another name or the same policy"
            )
        if clock is not None and clock is not rt.clock:
            raise ValueError(f"dependency {name!r} already runs on another clock ({rt.clock!r})")
        return rt

    def _get(self, name: str) -> Runtime:
        try:
            return self._runtimes[name]
        except KeyError:
            known = ", ".join(sorted(self._runtimes)) or "none"
            raise LookupError(f"unknown dependency {name!r} (known: {known})") from None

    def guard(self, name: str, policy: Policy | None = None) -> Guard:
        """A :class:`~seawall.Guard` for non-HTTP calls under *name*'s policy and state."""
        from ._guard import Guard

        return Guard(self._runtime(name, policy, None))

    def breaker(self, name: str) -> Breaker:
        """The breaker handle of *name* (LookupError if it has no breaker)."""
        breaker = self._get(name).breaker
        if breaker is None:
            raise LookupError(f"dependency {name!r} has no circuit breaker in its policy")
        return breaker

    def bulkhead(self, name: str) -> BulkheadHandle:
        """The bulkhead handle of *name* (LookupError if it has no bulkhead)."""
        bulkhead = self._get(name).bulkhead
        if bulkhead is None:
            raise LookupError(f"dependency {name!r} has no bulkhead in its policy")
        return bulkhead

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-ready figures for every dependency."""
        return {"dependencies": {name: rt.snapshot() for name, rt in self._runtimes.items()}}


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
