"""A real redis-server for the shared-state tests, started on a free loopback port.

``redis-server --port N --save '' --appendonly no --dir TMP``: nothing is ever
written to disk. The fault helpers act on the real process:

* ``pause()`` (SIGSTOP): connections are accepted by the kernel, never answered;
* ``resume()`` (SIGCONT);
* ``kill()`` (SIGKILL) and ``restart()`` (the same port, empty, scripts gone);
* ``slow(ms)``: ``CLIENT PAUSE ms ALL`` (Redis 7 refuses ``DEBUG SLEEP``
  without ``enable-debug-command``);
* ``flushall()``: the data wiped, the scripts kept.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

__all__ = ["RedisServer", "find_redis_server", "free_port"]


def find_redis_server() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process, owned by the test that started it."""

    def __init__(self, binary: str, workdir: Path, *, password: str | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.password = password
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A plain synchronous client, for the tests' own checks."""
        return redis.Redis(port=self.port, password=self.password, socket_timeout=5)

    def start(self) -> None:
        if not self.port:
            self.port = free_port()
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--loglevel",
            "warning",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        log = open(self.workdir / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Poll until the server answers PING (its start-up, not a timer of ours)."""
        deadline = time.monotonic() + 15
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited ({self.proc.returncode}); see {self.workdir}"
                )
            try:
                if self.client().ping():
                    return
            except redis.exceptions.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer within 15 s")
            time.sleep(0.01)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if self.paused:
            os.kill(proc.pid, signal.SIGCONT)
            self.paused = False
        proc.kill()
        proc.wait(10)

    def restart(self) -> None:
        """Kill it (if running) and start an empty one on the same port."""
        self.kill()
        self.start()

    def slow(self, ms: int) -> None:
        """Hold every client's commands for *ms* milliseconds (CLIENT PAUSE ALL)."""
        self.client().execute_command("CLIENT", "PAUSE", ms, "ALL")

    def flushall(self) -> None:
        self.client().flushall()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if self.paused:
            os.kill(proc.pid, signal.SIGCONT)
            self.paused = False
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
