"""Real processes for the CLI and crash tests: an app module and ``seawall outbox`` runs.

The module (written into a temp dir) builds its Registry, engine and Outbox
from environment variables, so every process of a test (the test itself, a
dispatcher, an app that enqueues) agrees on the database, table, upstream
and route settings.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

APP = '''
"""An outbox app for the tests: configured from the environment."""
import os

import seawall
from sqlalchemy import event
from sqlalchemy.ext.asyncio import create_async_engine

from seawall.outbox import Outbox, configure_sqlite

registry = seawall.Registry()
registry.add(
    "payments",
    base_url=os.environ["OUTBOX_UPSTREAM"],
    policy=seawall.Policy(
        retry=None,
        breaker=None,
        timeouts=seawall.Timeouts(read=float(os.environ.get("OUTBOX_READ_TIMEOUT", "10"))),
        pool=seawall.Pool(max_connections=200, max_keepalive=50),
    ),
)
url = os.environ["OUTBOX_DB_URL"]
engine = create_async_engine(url, pool_pre_ping=True)
if url.startswith("sqlite"):
    configure_sqlite(engine, busy_timeout=30)

outbox = Outbox(registry, engine, table=os.environ["OUTBOX_TABLE"])
outbox.route(
    "payments",
    honours_idempotency_key=os.environ.get("OUTBOX_KEYS", "1") == "1",
    send_deadline=float(os.environ.get("OUTBOX_SEND_DEADLINE", "30")),
    lease_margin=float(os.environ.get("OUTBOX_LEASE_MARGIN", "30")),
    backoff=seawall.Backoff(initial=0.2, maximum=2.0),
)
'''


def write_app(directory: Path, name: str = "outbox_app") -> str:
    """Write the app module into *directory*; returns the CLI target."""
    (directory / f"{name}.py").write_text(APP)
    return f"{name}:outbox"


def environment(directory: Path, **settings: Any) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(directory) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in settings.items():
        env[f"OUTBOX_{key.upper()}"] = str(value)
    return env


def cli(
    directory: Path, env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``seawall outbox ARGS`` to its end."""
    return subprocess.run(
        [sys.executable, "-m", "seawall", "outbox", *args],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start(directory: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """``seawall outbox ARGS`` in the background (a dispatcher); its stderr goes to a file
    (a pipe nobody reads would fill up and block it)."""
    log = directory / f"dispatcher-{uuid.uuid4().hex[:8]}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "seawall", "outbox", *args],
            cwd=directory,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
            start_new_session=True,
        )
    proc.log = log  # type: ignore[attr-defined]
    return proc


def stop(
    proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 60
) -> tuple[int, str]:
    """Signal *proc* and wait for it (kill it if it outlasts *timeout*); (exit code, stderr)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    log: Path = proc.log  # type: ignore[attr-defined]
    return proc.returncode, log.read_text()[-20_000:]
