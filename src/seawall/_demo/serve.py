"""A demo app in a child process:
``python -m seawall._demo.serve VARIANT UPSTREAM [PORT [DB [PAYMENT_WINDOW]]]``.

Binds 127.0.0.1 on PORT (0: a free port), keeps its orders in the SQLite file
DB (default: ``shop-VARIANT.db`` in the current directory), prints ``READY
<port>`` once serving, and exits cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any


def _setup_tracing() -> None:
    """Send the app's traces to OTLP when asked to (and the SDK is installed)."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        print("seawall demo: install seawall[otel] to export traces", file=sys.stderr)
        return
    provider = TracerProvider(resource=Resource.create({"service.name": "seawall-demo-shop"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


def _drop_below_warning(logger: Any, method: str, event_dict: Any) -> Any:
    import structlog

    if method in ("debug", "info"):
        raise structlog.DropEvent
    return event_dict


def main(argv: list[str]) -> None:
    variant, upstream = argv[0], argv[1]
    port = int(argv[2]) if len(argv) > 2 else 0
    db = argv[3] if len(argv) > 3 else f"shop-{variant}.db"
    import uvicorn

    from .apps import PAYMENT_WINDOW, CallCounts, plain_app, seawall_app

    window = float(argv[4]) if len(argv) > 4 else PAYMENT_WINDOW
    if variant == "seawall":
        _setup_tracing()
    # An app configures its own logging: here, warnings and up (breaker
    # transitions) to stderr, which the demo keeps in a file. The seawall shop
    # first counts the seawall.call event of every call its outbox makes.
    import logging

    import structlog

    calls = CallCounts(("payments", "refunds"))
    level = logging.DEBUG if variant == "seawall" else logging.WARNING
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        processors=[
            calls,
            _drop_below_warning,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
    )
    app = (
        seawall_app(upstream, db, calls=calls, payment_window=window)
        if variant == "seawall"
        else plain_app(upstream, db)
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        print(f"ERROR cannot listen on 127.0.0.1:{port}: {exc.strerror}", flush=True)
        sys.exit(2)
    config = uvicorn.Config(
        app, log_level="error", access_log=False, lifespan="on", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    # Nobody reads our stdout after this line: a full pipe would block the
    # event loop on the next log line.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1:])
