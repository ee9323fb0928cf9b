"""The demo's local providers are a dev distribution of their own (simulators/)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from notifier.cli.main import main


def test_the_demo_without_the_simulators_installed_says_how_to_install_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # None in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "notifier_simulators.local", None)
    result = CliRunner().invoke(main, ["demo", "--events", "1", "--exit", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "pip install -e simulators/" in result.output
    assert not list(tmp_path.glob("demo.db*"))  # stopped before it made anything


def test_the_core_distribution_does_not_depend_on_the_simulators_smtp_server() -> None:
    import tomllib

    from tests.support import REPO

    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    simulators = tomllib.loads((REPO / "simulators" / "pyproject.toml").read_text())
    assert not [d for d in core if d.startswith(("aiosmtpd", "aiosmtplib"))]
    assert any(d.startswith("aiosmtpd") for d in simulators["project"]["dependencies"])
