"""seawall.outbox's public names, and what importing seawall (and it) pulls in."""

from __future__ import annotations

import subprocess
import sys

import seawall.outbox


def test_all_is_sorted_and_every_name_resolves() -> None:
    names = seawall.outbox.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(seawall.outbox, name) is not None


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_importing_seawall_imports_neither_sqlalchemy_nor_the_outbox() -> None:
    result = _run(
        "import sys, seawall; "
        "print(sorted(m for m in sys.modules if m.startswith(('sqlalchemy', 'seawall.outbox', 'seawall.db'))))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_without_sqlalchemy_the_outbox_says_what_to_install() -> None:
    result = _run(
        "import sys; sys.modules['sqlalchemy'] = None\n"
        "from seawall.outbox import OutboxRoute, Verdict  # these need no SQLAlchemy\n"
        "OutboxRoute(send_deadline=5); Verdict.not_applied()\n"
        "try:\n"
        "    from seawall.outbox import Outbox\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'seawall[outbox]'" in result.stdout


def test_the_config_table_needs_no_sqlalchemy() -> None:
    result = _run(
        "import sys; sys.modules['sqlalchemy'] = None\n"
        "import seawall\n"
        "c = seawall.Config.from_mapping({'dependencies': {'p': {'base_url': 'https://p.example',"
        " 'outbox': {'send_deadline': 5}}}})\n"
        "print(c.dependencies['p'].outbox.send_deadline)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5"
