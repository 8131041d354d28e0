"""Fake upstreams to play with: the shop's three dependencies, breakable on demand.

    python -m examples.fastapi_app.upstreams

starts a payments provider with a ledger of its own
(``seawall.testing.PaymentProvider``), a catalog and a notifications service
(``seawall.testing.FaultyUpstream``) on 127.0.0.1:8101, 8102 and 8103 (the
URLs in resilience.toml), then reads commands such as ``payments hang``,
``checks 404`` or ``ledger`` (``help`` lists them).
"""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack

from seawall.testing import Fault, FaultyUpstream, PaymentProvider

PORTS = {"payments": 8101, "catalog": 8102, "notifications": 8103}

#: The path each command acts on, for the services that are plain FaultyUpstreams.
PATHS = {"catalog": "/items", "notifications": "/notifications"}

ITEMS = [
    {"sku": "tea", "name": "Green tea", "price_cents": 450},
    {"sku": "mug", "name": "Mug", "price_cents": 1200},
]

FAULTS = {
    "ok": Fault.ok(),
    "hang": Fault.hang(),
    "slow": Fault.latency(3.0),
    "reset": Fault.reset_connection(),
    "503": Fault.error(503, retry_after=2),
}

HELP = """\
commands:
  <service> <fault>   service: payments (POST /charges), checks (the status
                      check GET /charges/{id}), cancels (POST
                      /charges/{id}/cancel), catalog, notifications
                      fault: ok, hang, slow (3 s), reset, or a status such
                      as 500, 503, 404, 402 (declined)
                      (hang, slow and reset still charge or cancel: only the
                      answer is lost; an error status changes nothing)
  ledger              the provider's charges
  requests            what each service received
  help, quit"""


def fault_named(name: str) -> Fault | None:
    if name in FAULTS:
        return FAULTS[name]
    if name.isdigit() and 400 <= int(name) <= 599:
        return Fault.error(int(name))
    return None


def healthy(service: str) -> Fault:
    if service == "catalog":
        return Fault(body=json.dumps(ITEMS).encode(), headers={"content-type": "application/json"})
    return Fault.ok()


def apply(
    provider: PaymentProvider, servers: dict[str, FaultyUpstream], service: str, name: str
) -> str:
    fault = healthy(service) if name == "ok" else fault_named(name)
    if fault is None:
        return f"unknown fault {name!r}"
    if service == "payments":
        provider.fault(fault)
    elif service == "checks":
        provider.check_fault(fault)
    elif service == "cancels":
        provider.cancel_fault(fault)
    elif service in PATHS:
        servers[service].route(PATHS[service], fault)
    else:
        return f"unknown service {service!r}"
    return f"{service}: {name}"


def ledger(provider: PaymentProvider) -> str:
    charges = provider.charges()
    if not charges:
        return "no charges"
    return "\n".join(
        f"{c.id}  {c.order_id:<12} {c.amount:>8}  key={c.idempotency_key}"
        + ("  cancelled" if c.cancelled else "")
        for c in charges
    )


def main() -> None:
    with ExitStack() as stack:
        try:
            provider = stack.enter_context(PaymentProvider(port=PORTS["payments"]))
            servers = {
                service: stack.enter_context(FaultyUpstream(port=PORTS[service]))
                for service in PATHS
            }
        except OSError as exc:
            sys.exit(f"cannot listen: {exc}")
        for service, server in servers.items():
            server.route(PATHS[service], healthy(service))
        print(f"PAYMENTS_URL={provider.url}")
        for service, server in servers.items():
            print(f"{service.upper()}_URL={server.url}")
        print(HELP)
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] in ("quit", "exit"):
                break
            if words[0] == "ledger":
                print(ledger(provider))
            elif words[0] == "requests":
                print(f"payments: {provider.count()} requests")
                for service, server in servers.items():
                    print(f"{service}: {server.count()} requests")
            elif len(words) == 2:
                print(apply(provider, servers, words[0], words[1]))
            else:
                print(HELP)


if __name__ == "__main__":
    main()
