"""The demo's payment provider in its own process.

``python -m seawall._demo.upstream`` starts a :class:`~seawall.testing.PaymentProvider`
on a free loopback port, prints ``READY <port>``, then reads commands from
stdin, one a line:

* ``<path> ok``, ``<path> hang``, ``<path> latency <seconds>``,
  ``<path> error <status>``: script the path (``/charges`` scripts the
  charges, ``POST /charges``; any other path is routed as FaultyUpstream's);
* ``ledger``: print the provider's ledger as one JSON line,
  ``{"charges": [{"id", "order_id", "amount", "idempotency_key", "cancelled"}, ...]}``.

It stops at end of input. A process of its own, so the provider's work never
competes with the traffic generator for the GIL.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from seawall.testing import Fault, PaymentProvider


def parse(words: list[str]) -> Fault:
    kind = words[0]
    if kind == "ok":
        return Fault.ok()
    if kind == "hang":
        return Fault.hang()
    if kind == "latency":
        return Fault.latency(float(words[1]))
    if kind == "error":
        return Fault.error(int(words[1]))
    raise ValueError(f"unknown fault {kind!r}")


def ledger(provider: PaymentProvider) -> str:
    """The provider's ledger as one line of JSON."""
    return json.dumps({"charges": [dataclasses.asdict(c) for c in provider.charges()]})


def main() -> None:
    with PaymentProvider() as provider:
        print(f"READY {provider.port}", flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            try:
                if words == ["ledger"]:
                    print(ledger(provider), flush=True)
                elif words[0] == "/charges":
                    provider.fault(parse(words[1:]))
                else:
                    provider.route(words[0], parse(words[1:]))
            except (ValueError, IndexError) as exc:
                print(f"ERROR {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
