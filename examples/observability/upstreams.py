"""The example's two upstreams, as one fault source for a fleet of replicas.

In the compose stack's ``replicas`` profile both app replicas call these, so
they see the same weather (the phases of ``app.PHASES``): pricing on port
9001, inventory on 9002 (``PRICING_PORT``, ``INVENTORY_PORT``), on every
interface (``HOST``, ``0.0.0.0`` by default)::

    python -m examples.observability.upstreams

The single-replica app (``python -m examples.observability.app``) runs the
same two upstreams in its own process instead.
"""

from __future__ import annotations

import os

import anyio

from seawall.testing import FaultyUpstream

from .app import weather

__all__ = ["main"]


def main() -> None:
    host = os.environ.get("HOST", "0.0.0.0")
    pricing = FaultyUpstream(host=host, port=int(os.environ.get("PRICING_PORT", "9001")))
    inventory = FaultyUpstream(host=host, port=int(os.environ.get("INVENTORY_PORT", "9002")))
    with pricing, inventory:
        print(f"pricing on {pricing.url}, inventory on {inventory.url}", flush=True)
        anyio.run(weather, pricing, inventory)


if __name__ == "__main__":
    main()
