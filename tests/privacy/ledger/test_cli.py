"""``fedguard privacy ledger|cap`` on the coordinator's registry and on a site's ledger file."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from lifecycle.registry import Registry
from privacy.cli import privacy_app
from privacy.ledger import Charge, coordinator_ledger

M = "e" * 64


def test_ledger_shows_spent_and_remaining(registry: Registry) -> None:
    runner = CliRunner()
    assert runner.invoke(privacy_app, ["cap", "site-a", "5", "--kind", "record"]).exit_code == 0
    ledger = coordinator_ledger(registry)
    ledger.record(Charge("site-a", M, "r1", 1, "record", 1.1, 0.05, 40, 1e-5))
    ledger.record(Charge("site-b", M, "r1", 1, "site", 2.0, 0.5, 1, 1e-5))
    out = runner.invoke(privacy_app, ["ledger", "--json", "--site", "site-a"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    (row,) = data["entries"]
    assert row["site"] == "site-a" and row["epsilon_cap"] == 5.0
    assert row["epsilon_remaining"] == 5.0 - row["epsilon"]
    table = runner.invoke(privacy_app, ["ledger"])
    assert table.exit_code == 0 and "site-b" in table.output and "site-a" in table.output


def test_ledger_on_a_site_file(tmp_path: Path) -> None:
    runner = CliRunner()
    path = str(tmp_path / "site.db")
    assert runner.invoke(privacy_app, ["cap", "site-x", "2", "--ledger", path, "--json"]).exit_code == 0
    out = runner.invoke(privacy_app, ["ledger", "--ledger", path, "--json"])
    assert json.loads(out.output) == {"entries": [], "caps": [
        {"site": "site-x", "manifest": "*", "kind": "*", "epsilon": 2.0, "delta": 1e-5, "accountant": "rdp"}]}
    assert "no privacy spent yet" in runner.invoke(privacy_app, ["ledger", "--ledger", path]).output
