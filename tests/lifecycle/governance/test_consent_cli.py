"""`fedguard client withdraw` at the site, `fedguard site withdraw` at the coordinator, `models list --tainted`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedguard.cli import app
from lifecycle.errors import ConfigurationError, NotFoundError, VerificationError
from lifecycle.registry import Registry
from tests.lifecycle.governance.consent_helpers import publish

runner = CliRunner()


@pytest.fixture
def bundle(registry: Registry, tmp_path: Path) -> Path:
    """A federation with site st-marys enrolled (its bundle returned) and demo:1 trained on it and guys."""
    assert runner.invoke(app, ["coordinator", "init", "--federation", "fed"]).exit_code == 0
    out = tmp_path / "st-marys.bundle"
    enrolled = runner.invoke(app, ["site", "enroll", "st-marys", "--out", str(out)])
    assert enrolled.exit_code == 0, enrolled.output
    publish(registry, ("st-marys", "guys"))
    return out


def ok(*args: str) -> dict[str, object]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.stdout)
    return data


def refused(*args: str) -> tuple[type[BaseException], int]:
    result = runner.invoke(app, list(args))
    assert result.exception is not None, result.output
    return type(result.exception), int(getattr(result.exception, "exit_code", -1))


def test_a_site_signed_withdrawal_from_agent_to_registry(bundle: Path, tmp_path: Path) -> None:
    ids = tmp_path / "ids.csv"
    ids.write_text("patient_id\np-1\np-2\n")
    statement = tmp_path / "statement.json"
    site = ok("client", "withdraw", "--bundle", str(bundle), "--records", str(ids), "--reason", "asked",
              "--out", str(statement))
    assert (site["record_count"], site["new_ids"], site["statement"]) == (2, 2, str(statement))
    recorded = ok("site", "withdraw", "st-marys", "--reason", "site statement 2026-12-01", "--statement",
                  str(statement))
    withdrawal = recorded["withdrawal"]
    assert isinstance(withdrawal, dict)
    assert (withdrawal["source"], withdrawal["signed"], withdrawal["scope"], withdrawal["record_count"]) == (
        "site", True, "records", 2)
    assert recorded["tainted"] == ["demo:1"]
    assert refused("site", "withdraw", "st-marys", "--reason", "again", "--statement", str(statement)) == (
        ConfigurationError, 2)
    tampered = tmp_path / "tampered.json"
    data = json.loads(statement.read_text())
    data["statement"]["record-count"] = 1
    tampered.write_text(json.dumps(data))
    assert refused("site", "withdraw", "st-marys", "--reason", "r", "--statement", str(tampered)) == (
        VerificationError, 5)
    assert refused("site", "withdraw", "guys", "--reason", "r", "--statement", str(statement)) == (NotFoundError, 4)
    tainted = runner.invoke(app, ["models", "list", "--tainted", "--json"])
    (entry,) = json.loads(tainted.stdout)
    assert entry["ref"] == "demo:1" and [w["site"] for w in entry["withdrawals"]] == ["st-marys"]


def test_the_coordinator_records_a_withdrawal_on_the_sites_behalf(bundle: Path, tmp_path: Path) -> None:
    assert refused("site", "withdraw", "nowhere", "--reason", "r") == (NotFoundError, 4)
    ids = tmp_path / "ids.csv"
    ids.write_text("mrn,ward\n17,a\n18,b\n")
    both = ("site", "withdraw", "guys", "--reason", "r", "--records", str(ids), "--statement", str(ids))
    assert refused(*both) == (ConfigurationError, 2)
    human = runner.invoke(app, ["site", "withdraw", "guys", "--reason", "3 patients", "--records", str(ids),
                                "--id-column", "mrn"])
    assert human.exit_code == 0, human.output
    assert "withdrawal #1" in human.output and "demo:1" in human.output and "fedguard client withdraw" in human.output
    assert "17" not in human.output.replace("demo:1", "")
    whole = ok("site", "withdraw", "st-marys", "--reason", "left")  # enrolled: found even without lineage
    assert whole["tainted"] == ["demo:1"]
    listing = runner.invoke(app, ["models", "list", "--tainted"])
    assert listing.exit_code == 0 and "whole site" in listing.output and "2 record(s)" in listing.output
