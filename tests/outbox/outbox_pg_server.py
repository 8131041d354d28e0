"""A throwaway PostgreSQL server for tests and benchmarks: initdb + pg_ctl in a temp dir.

It listens on a free 127.0.0.1 port with ``fsync=off``. PostgreSQL refuses
to run as root, so under root (as in CI) both commands run as the
``postgres`` user, who owns the data directory. Binaries come from
``pg_config --bindir`` or ``/usr/lib/postgresql/*/bin``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

__all__ = ["PgServer", "find_bindir", "free_port"]


def find_bindir() -> str | None:
    """The directory holding initdb and pg_ctl, or None if PostgreSQL is not installed."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=30
            )
            candidates.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for bindir in candidates:
        if os.path.exists(os.path.join(bindir, "initdb")) and os.path.exists(
            os.path.join(bindir, "pg_ctl")
        ):
            return bindir
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    """One server; :meth:`start` and :meth:`stop` it, :meth:`create_database` per test module."""

    bindir: str
    root: str
    port: int
    user: str | None  # the OS user the server runs as (None: the current one)

    @classmethod
    def create(cls, bindir: str | None = None) -> PgServer:
        bindir = bindir or find_bindir()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL is not installed (no initdb/pg_ctl found)")
        user = "postgres" if os.geteuid() == 0 else None
        root = tempfile.mkdtemp(prefix="seawall-pg-")
        if user is not None:
            pw = pwd.getpwnam(user)
            os.chown(root, pw.pw_uid, pw.pw_gid)
        os.chmod(root, 0o700)
        server = cls(bindir, root, free_port(), user)
        server._run(
            "initdb",
            "-D",
            server.data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        return server

    @property
    def data(self) -> str:
        return os.path.join(self.root, "data")

    @property
    def log(self) -> str:
        return os.path.join(self.root, "server.log")

    def _run(self, program: str, *args: str, timeout: float = 120) -> None:
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs["user"] = self.user
        proc = subprocess.run(
            [os.path.join(self.bindir, program), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            check=False,
            **kwargs,
        )
        if proc.returncode != 0:
            log = ""
            if os.path.exists(self.log):
                with open(self.log) as f:
                    log = f.read()[-2000:]
            raise RuntimeError(
                f"{program} {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()} {log}"
            )

    def start(self) -> None:
        options = (
            f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o", options, "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-w", "-t", "60", "-m", mode, "stop")

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """A new database; returns its SQLAlchemy asyncpg URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"
