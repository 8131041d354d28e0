"""``seawall outbox ...``: status, reconcile, retry, resolve and purge (in process, through
``seawall.__main__.main``), and ``run`` as a real process stopped by SIGTERM."""

from __future__ import annotations

import json
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from outbox_procs import environment, start, stop, write_app

import seawall
from conftest import enqueue, eventually, make_engine, plain_policy, row, rows
from seawall.__main__ import main
from seawall.outbox import Outbox
from seawall.testing._upstream import Fault, FaultyUpstream


class App:
    """The app module on disk (what the CLI loads) and, for the test, an Outbox on the
    same table (wall clock), driven with anyio.run between CLI calls."""

    def __init__(
        self, directory: Path, target: str, db_url: str, table: str, upstream: str
    ) -> None:
        self.directory = directory
        self.target = target
        registry = seawall.Registry()
        registry.add(
            "payments",
            base_url=upstream,
            policy=plain_policy(timeouts=seawall.Timeouts(read=0.3, attempt=None, total=None)),
        )
        self.registry = registry
        self.db_url = db_url
        self.table = table

    def run(self, fn: Any) -> Any:
        """``fn(outbox)`` on a fresh event loop and engine."""

        async def go() -> Any:
            engine = make_engine(self.db_url)
            outbox = Outbox(self.registry, engine, table=self.table)
            outbox.route("payments", honours_idempotency_key=False)
            try:
                return await fn(outbox)
            finally:
                await self.registry.aclose()
                await engine.dispose()

        return anyio.run(go, backend="asyncio")


@pytest.fixture
def app(
    tmp_path: Path, db_url: str, upstream: FaultyUpstream, monkeypatch: pytest.MonkeyPatch
) -> Iterator[App]:
    name = f"outbox_app_{uuid.uuid4().hex[:8]}"
    table = f"outbox_{uuid.uuid4().hex[:10]}"
    target = write_app(tmp_path, name)
    for key, value in environment(
        tmp_path, upstream=upstream.url, db_url=db_url, table=table, read_timeout=0.3, keys=0
    ).items():
        if key.startswith("OUTBOX_"):
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    app = App(tmp_path, target, db_url, table, upstream.url)
    app.run(lambda outbox: outbox.create_schema())
    yield app
    sys.modules.pop(name, None)


@pytest.fixture(autouse=True)
def _pristine_structlog() -> Iterator[None]:
    """The CLI configures structlog (to stderr) only if nobody did: a configuration
    an earlier test left behind must not send its events to stdout here."""
    was_configured = structlog.is_configured()
    config = structlog.get_config()
    structlog.reset_defaults()
    yield
    if was_configured:
        structlog.configure(**config)
    else:
        structlog.reset_defaults()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()  # what came before (the setup's logs) is not the command's
    code = main(["outbox", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_status_reconcile_resolve_retry_and_purge(
    app: App, upstream: FaultyUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream.route("/v1/charges", Fault.hang(), Fault.ok())

    async def setup(outbox: Outbox) -> tuple[int, int]:
        stuck = await enqueue(outbox)
        fine = await enqueue(outbox)
        await outbox.dispatcher(concurrency=1).drain()
        return stuck.id, fine.id

    stuck, fine = app.run(setup)
    states = app.run(lambda o: _states(o))
    assert states == {stuck: "unknown", fine: "succeeded"}

    code, out, _ = cli(capsys, "status", app.target, "--json")
    assert code == 0
    found = json.loads(out)["dependencies"]["payments"]
    assert (found["unknown"]["count"], found["succeeded"]["count"]) == (1, 1)
    code, out, _ = cli(capsys, "status", app.target)
    assert "unknown" in out

    # A key-ignoring dependency with no verifier: only a person can settle it.
    code, out, _ = cli(capsys, "reconcile", app.target, "--older-than", "0s", "--dry-run", "--json")
    assert code == 3
    assert json.loads(out)["candidates"]["unknown"] == 1
    code, out, _ = cli(capsys, "reconcile", app.target, "--older-than", "0s")
    assert code == 3
    assert f"needs a person: entry {stuck} (payments, unknown)" in out

    code, _, err = cli(capsys, "resolve", app.target, str(fine), "--as", "failed")
    assert code == 1  # succeeded and not flagged: nothing to settle
    assert "not unknown, failed or flagged" in err
    assert cli(capsys, "resolve", app.target, str(stuck), "--as", "failed")[0] == 0
    assert cli(capsys, "reconcile", app.target, "--older-than", "0s")[0] == 0

    assert cli(capsys, "retry", app.target, str(stuck))[0] == 0
    entry = app.run(lambda o: row(o, stuck))
    assert (entry["state"], entry["attempts"]) == ("pending", 0)
    assert cli(capsys, "retry", app.target, "999999")[0] == 1

    code, out, _ = cli(capsys, "purge", app.target, "--older-than", "0s")
    assert (code, out.strip()) == (0, "purged 1 entries")
    assert [r["id"] for r in app.run(rows)] == [stuck]


async def _states(outbox: Outbox) -> dict[int, str]:
    return {r["id"]: r["state"] for r in await rows(outbox)}


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["status", "outbox_app"], "must be MODULE:ATTRIBUTE", id="no-attribute"),
        pytest.param(["status", "{module}:nope"], "has no attribute 'nope'", id="missing"),
        pytest.param(["status", "{module}:registry"], "is not a seawall.outbox.Outbox", id="type"),
        pytest.param(
            ["status", "no_such_module:x"], "No module named 'no_such_module'", id="module"
        ),
    ],
)
def test_bad_targets_exit_2(
    app: App, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    module = app.target.partition(":")[0]
    code, _, err = cli(capsys, *[a.format(module=module) for a in args])
    assert code == 2
    assert message in err


@pytest.mark.parametrize("backend", ["sqlite"])
def test_bad_durations_exit_2(app: App, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli(capsys, "purge", app.target, "--older-than", "soon")
    assert exited.value.code == 2
    assert "duration: must be seconds or a duration" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["sqlite"])
def test_database_errors_are_one_line(
    app: App, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTBOX_TABLE", "no_such_table")
    code, _, err = cli(capsys, "status", app.target)
    assert code == 1
    assert err.startswith("seawall outbox: database error: ")
    assert "no_such_table" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.anyio
async def test_run_dispatches_and_sigterm_lets_sends_in_flight_finish(
    tmp_path: Path, db_url: str, upstream: FaultyUpstream
) -> None:
    table = f"outbox_{uuid.uuid4().hex[:10]}"
    target = write_app(tmp_path)
    env = environment(tmp_path, upstream=upstream.url, db_url=db_url, table=table)
    registry = seawall.Registry()
    registry.add("payments", base_url=upstream.url, policy=plain_policy())
    engine = make_engine(db_url)
    outbox = Outbox(registry, engine, table=table)
    await outbox.create_schema()
    upstream.route("/v1/charges", Fault.latency(1.0))
    proc = start(tmp_path, env, "run", target, "--poll-interval", "0.05")
    try:
        refs = [await enqueue(outbox) for _ in range(3)]
        await eventually(lambda: upstream.count() == 3, within=60)
    finally:
        code, err = await anyio.to_thread.run_sync(stop, proc, signal.SIGTERM)
    assert code == 0, err
    assert "seawall outbox: stopped" in err
    # The three sends were in flight at SIGTERM: they finished and were recorded.
    assert [(await row(outbox, r.id))["state"] for r in refs] == ["succeeded"] * 3
    await engine.dispose()
