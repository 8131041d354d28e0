"""The demo's fault-injecting upstream in its own process.

``python -m seawall._demo.upstream`` starts a FaultyUpstream on a free loopback
port, prints ``READY <port>``, then reads commands from stdin, one a line:
``<path> ok``, ``<path> hang``, ``<path> latency <seconds>``,
``<path> error <status>``. It stops at end of input. A process of its own, so
the upstream's work never competes with the traffic generator for the GIL.
"""

from __future__ import annotations

import sys

from seawall.testing import Fault, FaultyUpstream


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


def main() -> None:
    with FaultyUpstream() as upstream:
        print(f"READY {upstream.port}", flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            try:
                upstream.route(words[0], parse(words[1:]))
            except (ValueError, IndexError) as exc:
                print(f"ERROR {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
