"""``seawall outbox run|reconcile|status|retry|resolve|purge MODULE:ATTRIBUTE``.

The target names your Outbox the way uvicorn names an app: ``myapp.outbox:outbox``
(an ``Outbox``, or a function returning one), imported with the current
directory on ``sys.path``, so its verifiers, compensators and routes are
registered as in the app.

Exit status: 0; 1 for an entry that could not be changed; 2 for a bad
target or argument; 3 when ``reconcile`` (or ``status``) found entries that
need a person, for cron alerts.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ._route import parse_duration

if TYPE_CHECKING:
    from ._outbox import Outbox

__all__ = ["add_parser", "main"]

NEEDS_A_PERSON = 3


def _duration(text: str) -> float:
    try:
        return parse_duration(text, name="duration")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(commands: Any) -> None:
    """Add ``seawall outbox ...`` to the ``seawall`` command's subparsers."""
    outbox = commands.add_parser(
        "outbox",
        help="run and operate a transactional outbox (seawall.outbox)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = outbox.add_subparsers(dest="outbox_command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=text, description=text)
        parser.add_argument("target", help="where your Outbox is: MODULE:ATTRIBUTE")
        return parser

    run = command("run", "dispatch until SIGTERM (then finish the sends in flight)")
    run.add_argument("--concurrency", type=int, default=8, help="sends at once (default 8)")
    run.add_argument("--batch-size", type=int, default=32, help="entries per claim (default 32)")
    run.add_argument(
        "--poll-interval", type=float, default=1.0, help="seconds between looks (default 1)"
    )
    run.add_argument(
        "--retention", type=_duration, default=7 * 86400.0, help="keep finished rows (default 7d)"
    )

    reconcile = command(
        "reconcile",
        "the batch correction: re-verify stale unknowns, retry compensations, fail pending "
        "entries past max_age, run reconcilers; exit 3 if any entry needs a person",
    )
    reconcile.add_argument(
        "--older-than", type=_duration, default=3600.0, help="what is stale (default 1h)"
    )
    reconcile.add_argument("--dependency", help="only this dependency")
    reconcile.add_argument("--dry-run", action="store_true", help="count, change nothing")
    reconcile.add_argument("--json", action="store_true", help="print JSON")

    status = command("status", "entries per dependency and state, oldest ages, attention flags")
    status.add_argument("--json", action="store_true", help="print JSON")

    retry = command("retry", "make a failed, unknown or cancelled entry pending again, now")
    retry.add_argument("id", type=int)

    resolve = command("resolve", "settle an unknown (or flagged) entry by hand")
    resolve.add_argument("id", type=int)
    resolve.add_argument(
        "--as", dest="outcome", required=True, choices=("succeeded", "failed", "resend")
    )

    purge = command("purge", "delete succeeded, compensated and cancelled entries, in pages")
    purge.add_argument(
        "--older-than", type=_duration, default=7 * 86400.0, help="finished before (default 7d)"
    )
    purge.add_argument("--page", type=int, default=1000, help="rows per transaction")


def load(target: str) -> Outbox:
    """The Outbox at ``MODULE:ATTRIBUTE`` (or what a function there returns)."""
    from . import Outbox  # without SQLAlchemy: an ImportError saying what to install

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(
            f"target: must be MODULE:ATTRIBUTE (e.g. myapp.outbox:outbox), got {target!r}"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    found: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ValueError(f"target: {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(found, Outbox) and callable(found):
        found = found()
    if not isinstance(found, Outbox):
        raise TypeError(f"target: {target!r} is not a seawall.outbox.Outbox, got {found!r}")
    return found


def _logging(level: int) -> None:
    """The CLI is the program: its logs go to stderr (stdout is for results), unless the
    target module configured structlog itself."""
    import structlog

    if not structlog.is_configured():
        structlog.configure(
            logger_factory=structlog.PrintLoggerFactory(sys.stderr),
            wrapper_class=structlog.make_filtering_bound_logger(level),
        )


def main(args: argparse.Namespace) -> int:
    import logging

    try:
        outbox = load(args.target)
    except (ImportError, ValueError, TypeError) as exc:
        print(f"seawall outbox: {exc}", file=sys.stderr)
        return 2
    action: Callable[[Outbox, argparse.Namespace], Awaitable[int]] = _COMMANDS[args.outbox_command]
    _logging(logging.INFO if args.outbox_command == "run" else logging.WARNING)

    async def run() -> int:
        try:
            async with outbox.registry:
                return await action(outbox, args)
        finally:
            await outbox.engine.dispose()

    from sqlalchemy.exc import SQLAlchemyError

    try:
        return asyncio.run(run())
    except ValueError as exc:
        print(f"seawall outbox: {exc}", file=sys.stderr)
        return 2
    except (SQLAlchemyError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"seawall outbox: database error: {first}", file=sys.stderr)
        return 1


async def _run(outbox: Outbox, args: argparse.Namespace) -> int:
    dispatcher = outbox.dispatcher(
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        poll_interval=args.poll_interval,
        retention=args.retention,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, dispatcher.stop)
    print(
        f"seawall outbox: dispatching {outbox!r} as {dispatcher.owner}", file=sys.stderr, flush=True
    )
    await dispatcher.run()
    print("seawall outbox: stopped", file=sys.stderr, flush=True)
    return 0


async def _reconcile(outbox: Outbox, args: argparse.Namespace) -> int:
    report = await outbox.reconcile(
        older_than=args.older_than, dependency=args.dependency, dry_run=args.dry_run
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        title = "would check" if report.dry_run else "checked"
        print(f"{title}: " + ", ".join(f"{k} {v}" for k, v in sorted(report.candidates.items())))
        for move, n in sorted(report.transitions.items()):
            print(f"  {move}: {n}")
        if not report.transitions and not report.dry_run:
            print("  no changes")
        for entry in report.attention:
            print(
                f"needs a person: entry {entry['id']} ({entry['dependency']}, {entry['state']}): "
                f"{entry['reason']}"
            )
    return report.exit_code


async def _status(outbox: Outbox, args: argparse.Namespace) -> int:
    found = await outbox.status()
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        if not found["dependencies"]:
            print("no entries")
        for dep, states in sorted(found["dependencies"].items()):
            print(dep)
            for state, figures in sorted(states.items()):
                flagged = figures["needs_attention"]
                print(
                    f"  {state:<12} {figures['count']:>8}   oldest {figures['oldest_age']:.0f} s"
                    + (f"   {flagged} need a person" if flagged else "")
                )
    return NEEDS_A_PERSON if found["needs_attention"] else 0


async def _retry(outbox: Outbox, args: argparse.Namespace) -> int:
    if await outbox.retry(args.id):
        print(f"entry {args.id}: pending")
        return 0
    print(f"entry {args.id}: not found, or not failed, unknown or cancelled", file=sys.stderr)
    return 1


async def _resolve(outbox: Outbox, args: argparse.Namespace) -> int:
    if await outbox.resolve(args.id, args.outcome):
        print(f"entry {args.id}: resolved as {args.outcome}")
        return 0
    print(f"entry {args.id}: not found, or not unknown, failed or flagged", file=sys.stderr)
    return 1


async def _purge(outbox: Outbox, args: argparse.Namespace) -> int:
    deleted = await outbox.purge(args.older_than, page=args.page)
    print(f"purged {deleted} entries")
    return 0


_COMMANDS: dict[str, Callable[[Outbox, argparse.Namespace], Awaitable[int]]] = {
    "run": _run,
    "reconcile": _reconcile,
    "status": _status,
    "retry": _retry,
    "resolve": _resolve,
    "purge": _purge,
}
