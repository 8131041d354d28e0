"""seawall for httpx2, Pydantic's maintained continuation of httpx.

The same :class:`ResilientClient` and :class:`ResilientTransport` as
``seawall``'s, subclassing ``httpx2.AsyncClient`` and
``httpx2.AsyncBaseTransport``, over the same call engine. SDKs built on
httpx2 (openai 3.x, anthropic 2.x) accept them as they are::

    from seawall.httpx2 import ResilientClient

    client = ResilientClient("openai", policy=policy)
    sdk = openai.AsyncOpenAI(http_client=client, max_retries=0)

Install with ``pip install "seawall[httpx2]"``. This module is the only one
that imports httpx2; the rest of seawall runs with or without it.
"""

from __future__ import annotations

import httpx2

from ._client import ClientCore
from ._http import Flavor
from ._transport import TransportCore

__all__ = ["AttemptTimeout", "ResilientClient", "ResilientTransport"]


class AttemptTimeout(httpx2.ReadTimeout, TimeoutError):
    """An attempt cut by ``Timeouts.attempt``: an ``httpx2.ReadTimeout`` and a ``TimeoutError``."""


HTTPX2 = Flavor(httpx2, AttemptTimeout)


class ResilientTransport(TransportCore, httpx2.AsyncBaseTransport):
    """An httpx2 transport that applies a seawall policy to every request.

    The httpx2 twin of :class:`seawall.ResilientTransport`: same arguments,
    same behaviour, same reports.
    """

    _flavor = HTTPX2


class ResilientClient(ClientCore, httpx2.AsyncClient):
    """An ``httpx2.AsyncClient`` for one named dependency, protected by a policy.

    The httpx2 twin of :class:`seawall.ResilientClient`: same arguments
    (``policy``, ``base_url`` or ``endpoints``, ``idempotency_key=`` on
    ``post``/``put``/``patch``/``delete``/``request``/``stream``), same behaviour.
    """

    _flavor = HTTPX2
    _transport_class = ResilientTransport
