"""How the outbox sends to one dependency: :class:`OutboxRoute` (no SQLAlchemy here).

Set in code with ``outbox.route("payments", ...)`` or in the configuration
file as a ``[dependencies.payments.outbox]`` table; code wins over the file,
key by key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from .._config import (
    Backoff,
    _build,
    _fmt,
    _integer,
    _key,
    _line,
    _Problem,
    _raise_if,
    _seconds,
)
from .._exceptions import ConfigError

__all__ = ["DEFAULT_ROUTE", "OutboxRoute", "parse_duration"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")
_KEY_STYLES = ("raw", "sf-string")


def parse_duration(value: object, *, name: str = "duration") -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"1h"``, ``"7d"`` or ``"2w"``.

    Raises ValueError naming *name* and the value otherwise.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        raise ValueError(
            f"{name}: must be seconds or a duration such as 90s, 15m, 1h, 7d, got {value!r}"
        )
    if not 0 <= seconds <= 1e9:
        raise ValueError(f"{name}: must be between 0 and 1e9 seconds, got {value!r}")
    return seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxRoute:
    """How the outbox sends to one dependency.

    * ``honours_idempotency_key``: the provider deduplicates on the key (Stripe,
      Adyen, most payment APIs). Then the key is sent, the client may retry a
      request after it left, an expired lease is simply resent, and an unknown
      outcome with no verifier is resent after ``verify_delay``. Without it no
      key is sent, nothing that may have left is resent, and an unknown
      outcome waits for a verifier, reconcile or a person.
    * ``key_style``: ``"raw"`` sends the key as is (Stripe-style);
      ``"sf-string"`` quotes it as a structured-field string (the IETF draft).
    * ``send_deadline``: each send runs under ``seawall.deadline(send_deadline)``;
      the lease is ``send_deadline + lease_margin``, so no send outlives it.
    * ``backoff``: the wait before the next attempt (at least any Retry-After).
    * ``max_attempts`` and ``max_age`` (seconds since enqueue): past either, a
      retryable failure becomes ``failed``.
    * ``verify_delay``: how long after an unknown outcome the verifier runs.
    * ``sensitive_headers``: header names never stored, on top of
      Authorization, Proxy-Authorization and Cookie (and the Outbox's own list).
    """

    honours_idempotency_key: bool = True
    key_style: Literal["raw", "sf-string"] = "raw"
    send_deadline: float = 30.0
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=1.0, maximum=900.0))
    max_attempts: int = 20
    max_age: float = 86400.0
    verify_delay: float = 30.0
    lease_margin: float = 30.0
    sensitive_headers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems: list[_Problem] = []
        if not isinstance(self.honours_idempotency_key, bool):
            problems.append(
                ("honours_idempotency_key", "must be a boolean", self.honours_idempotency_key)
            )
        if self.key_style not in _KEY_STYLES:
            problems.append(("key_style", 'must be "raw" or "sf-string"', self.key_style))
        _seconds(problems, "send_deadline", self.send_deadline, optional=False, maximum=86400.0)
        if not isinstance(self.backoff, Backoff):
            problems.append(("backoff", "must be a seawall.Backoff", self.backoff))
        _integer(problems, "max_attempts", self.max_attempts, minimum=1)
        _seconds(problems, "max_age", self.max_age, optional=False)
        _seconds(problems, "verify_delay", self.verify_delay, optional=False, zero_ok=True)
        _seconds(problems, "lease_margin", self.lease_margin, optional=False, zero_ok=True)
        names = self.sensitive_headers
        if isinstance(names, list):
            names = tuple(names)
            object.__setattr__(self, "sensitive_headers", names)
        if not isinstance(names, tuple) or not all(isinstance(n, str) and n for n in names):
            problems.append(("sensitive_headers", "must be a list of header names", names))
        _raise_if("OutboxRoute", problems)

    @property
    def lease(self) -> float:
        """Seconds a claim lasts: ``send_deadline + lease_margin``."""
        return self.send_deadline + self.lease_margin

    def updated(self, **changes: Any) -> OutboxRoute:
        """A copy with *changes* (validated); unknown names are errors."""
        known = {f.name for f in fields(OutboxRoute)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(
                f"outbox.route(): unknown setting {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        return replace(self, **changes)

    @classmethod
    def from_mapping(cls, data: object, path: str, problems: list[str]) -> OutboxRoute | None:
        """Build from a ``[dependencies.NAME.outbox]`` table; problems carry *path*."""
        if not isinstance(data, Mapping):
            problems.append(_line(path, "must be a table", data))
            return None
        before = len(problems)
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            where = f"{path}.{_key(key)}"
            if key not in known:
                problems.append(_line(where, "unknown key", value))
            elif key == "backoff":
                kwargs[key] = _build(Backoff, value, where, problems, optional=False)
            elif key in ("send_deadline", "max_age", "verify_delay", "lease_margin") and isinstance(
                value, str
            ):
                try:
                    kwargs[key] = parse_duration(value, name=where)
                except ValueError as exc:
                    problems.append(str(exc))
            else:
                kwargs[key] = value
        # Built even after a problem (without the keys that had one): every
        # problem is reported at once.
        kwargs = {k: v for k, v in kwargs.items() if v is not None or k not in ("backoff",)}
        try:
            built = cls(**kwargs)
        except ConfigError as exc:
            problems.extend(_fmt(f"{path}.", p) for p in exc._raw)
            return None
        return built if len(problems) == before else None


DEFAULT_ROUTE = OutboxRoute()
