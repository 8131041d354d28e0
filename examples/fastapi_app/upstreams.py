"""Fake upstreams to play with: the shop's three dependencies, breakable on demand.

    python -m examples.fastapi_app.upstreams

starts a payments provider, a catalog and a notifications service on
127.0.0.1:8101, 8102 and 8103 (the URLs in resilience.toml), each a
``seawall.testing.FaultyUpstream``, then reads commands such as
``payments hang`` or ``catalog 500`` (``help`` lists them).
"""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack

from seawall.testing import Fault, FaultyUpstream

PORTS = {"payments": 8101, "catalog": 8102, "notifications": 8103}

#: The path each command acts on.
PATHS = {"payments": "/charges", "catalog": "/items", "notifications": "/notifications"}

ITEMS = [
    {"sku": "tea", "name": "Green tea", "price_cents": 450},
    {"sku": "mug", "name": "Mug", "price_cents": 1200},
]

FAULTS = {
    "ok": Fault.ok(),
    "hang": Fault.hang(),
    "slow": Fault.latency(3.0),
    "reset": Fault.reset_connection(),
    "500": Fault.error(500),
    "503": Fault.error(503, retry_after=2),
}

HELP = """\
commands:
  <service> <fault>   service: payments, catalog, notifications, checks
                      fault:   ok, hang, slow (3 s), reset, 500, 503, 404
                      ("payments" is POST /charges; "checks" is the status
                      check GET /charges/{id}: ok means charged, 404 not)
  requests            what each service received
  help, quit"""


def healthy(service: str) -> Fault:
    if service == "catalog":
        return Fault(body=json.dumps(ITEMS).encode(), headers={"content-type": "application/json"})
    return Fault.ok()


def apply(servers: dict[str, FaultyUpstream], service: str, name: str) -> str:
    if name == "404":
        fault = Fault.error(404)
    elif name == "ok":
        fault = healthy(service)
    elif name in FAULTS:
        fault = FAULTS[name]
    else:
        return f"unknown fault {name!r}"
    if service == "checks":
        servers["payments"].set_default(fault)  # every path but /charges
        return f"status checks: {name}"
    if service not in servers:
        return f"unknown service {service!r}"
    servers[service].route(PATHS[service], fault)
    return f"{service}: {name}"


def main() -> None:
    with ExitStack() as stack:
        servers = {}
        for service, port in PORTS.items():
            try:
                servers[service] = stack.enter_context(FaultyUpstream(port=port))
            except OSError as exc:
                sys.exit(f"{service}: {exc}")
            servers[service].route(PATHS[service], healthy(service))
        for service, server in servers.items():
            print(f"{service.upper()}_URL={server.url}")
        print(HELP)
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] in ("quit", "exit"):
                break
            if words[0] == "requests":
                for service, server in servers.items():
                    print(f"{service}: {server.count()} requests")
            elif len(words) == 2:
                print(apply(servers, words[0], words[1]))
            else:
                print(HELP)


if __name__ == "__main__":
    main()
