"""``seawall`` on the command line: ``seawall demo`` (or ``python -m seawall demo``) and
``seawall outbox run|reconcile|status|retry|resolve|purge``."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seawall", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="the storm, live: the same app through plain httpx and through seawall",
        description="Run a scripted storm on a payments dependency against the same shop app "
        "twice, side by side: once through a shared httpx.AsyncClient, once through seawall.",
    )
    demo.add_argument("--duration", type=float, default=40.0, help="seconds per run (default 40)")
    demo.add_argument(
        "--scenario", default="storm", choices=("storm", "hang", "outage"), help="the fault script"
    )
    demo.add_argument("--pay-clients", type=int, default=100, help="concurrent /pay clients")
    demo.add_argument("--catalog-clients", type=int, default=10, help="concurrent /catalog clients")
    demo.add_argument(
        "--think", type=float, default=1.0, help="seconds each client waits between requests"
    )
    demo.add_argument(
        "--port",
        type=int,
        default=0,
        help="first of the apps' ports: two, or 2 x --replicas (default: free ports)",
    )
    demo.add_argument(
        "--otlp-endpoint",
        default=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        help="send the seawall app's traces to this OTLP/HTTP endpoint (e.g. Jaeger's http://localhost:4318)",
    )
    demo.add_argument("--json", action="store_true", help="print only the summary, as JSON")
    demo.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="run each shop as N replicas behind a round robin; the seawall ones share "
        "state on Redis (default 1)",
    )
    demo.add_argument(
        "--redis",
        default=None,
        metavar="URL",
        help="the seawall replicas' Redis, e.g. redis://localhost:6379/0 (default: start a "
        "redis-server found on the PATH)",
    )
    from .outbox._cli import add_parser as add_outbox_parser

    add_outbox_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "outbox":
        from .outbox._cli import main as outbox_main

        return outbox_main(args)

    try:
        import rich  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(f"seawall demo needs {exc.name}: pip install 'seawall[demo]'", file=sys.stderr)
        return 2
    if args.replicas > 1:
        try:
            import redis  # noqa: F401
        except ImportError:
            print(
                "seawall demo --replicas needs redis-py: pip install 'seawall[demo]'",
                file=sys.stderr,
            )
            return 2
    from ._demo.runner import Settings, run_demo

    return run_demo(
        Settings(
            duration=args.duration,
            scenario=args.scenario,
            pay_clients=args.pay_clients,
            catalog_clients=args.catalog_clients,
            think=args.think,
            base_port=args.port,
            otlp_endpoint=args.otlp_endpoint,
            json_only=args.json,
            replicas=args.replicas,
            redis=args.redis,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
