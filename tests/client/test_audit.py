"""The site's local audit log: one chained line per reply, digests of the wire bytes, tamper detection, CLI."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from typer.testing import CliRunner

from client.audit import AuditLogError, SiteAuditLog, make_audit_mod, verify_log, wire_bytes
from fedguard.cli import app as cli
from tests.privacy.ledger.flwr_helpers import arrays, context, train_message


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 7), ("_task_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value, raising=False)


def _clock() -> Any:
    start = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    ticks = iter(range(1000))
    return lambda: start + timedelta(seconds=next(ticks))


def _reply(msg: Message, value: float = 1.0) -> Message:
    return Message(RecordDict({"arrays": arrays({"w": np.full(3, value, dtype=np.float32)}),
                               "metrics": MetricRecord({"num-examples": 3}),
                               "site": ConfigRecord({"name": "st-marys"})}), reply_to=msg)


def _log_three(path: Path) -> list[Message]:
    log = SiteAuditLog(path, now=_clock())
    replies = []
    for rnd in (1, 2, 3):
        msg = train_message({}, server_round=rnd)
        replies.append(_reply(msg, rnd))
        log.append(msg, replies[-1])
    return replies


def test_lines_record_size_and_digest_of_the_wire_bytes_never_the_content(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "site.jsonl"
    replies = _log_three(path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [entry["round"] for entry in lines] == [1, 2, 3] and [e["seq"] for e in lines] == [1, 2, 3]
    for entry, reply in zip(lines, replies, strict=True):
        blob = wire_bytes(reply)
        assert entry["size"] == len(blob) and entry["sha256"] == hashlib.sha256(blob).hexdigest()
        assert entry["kind"] == "train" and entry["run-id"] == 7 and entry["records"] == ["arrays", "metrics", "site"]
        assert set(entry) == {"at", "run-id", "round", "kind", "error", "records", "size", "sha256", "seq", "prev",
                              "hash"}
    assert lines[0]["at"] == "2026-11-27T09:00:00+00:00"
    assert "st-marys" not in path.read_text()  # content never logged
    assert path.stat().st_mode & 0o777 == 0o600
    assert verify_log(path) == 3


@pytest.mark.parametrize("tamper", ["edit", "delete", "swap"])
def test_tampering_is_detected(tmp_path: Path, tamper: str) -> None:
    path = tmp_path / "site.jsonl"
    _log_three(path)
    lines = path.read_text().splitlines()
    if tamper == "edit":
        entry = json.loads(lines[1])
        entry["size"] += 1
        lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    elif tamper == "delete":
        del lines[1]
    else:
        lines[0], lines[1] = lines[1], lines[0]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AuditLogError, match="line [12] "):
        verify_log(path)


def test_the_mod_records_replies_and_app_exceptions(tmp_path: Path) -> None:
    path = tmp_path / "site.jsonl"
    mod = make_audit_mod(lambda ctx: SiteAuditLog(path, now=_clock()))
    ctx: Context = context({"site-name": "st-marys"})
    msg = train_message({}, server_round=4)
    reply = mod(msg, ctx, lambda m, c: _reply(m))
    assert not reply.has_error()

    def failing(m: Message, c: Context) -> Message:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        mod(msg, ctx, failing)
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first["sha256"] == hashlib.sha256(wire_bytes(reply)).hexdigest()
    expected = wire_bytes(Error(code=2, reason="<class 'ValueError'>:<'boom'>"))
    assert second["error"] is True and second["sha256"] == hashlib.sha256(expected).hexdigest()
    assert second["records"] == [] and second["round"] == 4


def test_default_path_is_under_the_site_state_dir(fedguard_home: Path) -> None:
    from client.audit import site_audit_mod

    msg = train_message({}, server_round=1)
    site_audit_mod(msg, context({"site-name": "st marys"}), lambda m, c: _reply(m))
    assert verify_log(fedguard_home / "site" / "st_marys" / "audit.jsonl") == 1


def test_cli_audit_shows_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "site.jsonl"
    _log_three(path)
    runner = CliRunner()
    shown = runner.invoke(cli, ["client", "audit", "--log", str(path), "--json"])
    assert shown.exit_code == 0 and [e["round"] for e in json.loads(shown.stdout)] == [1, 2, 3]
    ok = runner.invoke(cli, ["client", "audit", "--log", str(path), "--verify"])
    assert ok.exit_code == 0 and "verified 3 line(s)" in ok.stdout.replace("\n", " ")
    path.write_text(path.read_text().replace('"round":2', '"round":5'))
    broken = runner.invoke(cli, ["client", "audit", "--log", str(path), "--verify"])
    assert isinstance(broken.exception, AuditLogError) and broken.exception.exit_code == 5


def test_cli_check_reports_every_problem(tmp_path: Path) -> None:
    schema = tmp_path / "schema.toml"
    schema.write_text('label = "y"\nlabel-values = [0, 1]\n[columns]\na = { type = "int", min = 0 }\n')
    data = tmp_path / "site.csv"
    data.write_text("a,y\n1,0\n-1,1\n2,3\n")
    runner = CliRunner()
    result = runner.invoke(cli, ["client", "check", "--data", str(data), "--schema", str(schema), "--json"])
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["bad_rows"] == 2 and {p["kind"] for p in report["problems"]} == {"below-min", "unknown-label"}
    data.write_text("a,y\n1,0\n2,1\n")
    result = runner.invoke(cli, ["client", "check", "--data", str(data), "--schema", str(schema)])
    assert result.exit_code == 0 and "2 rows match the site's schema" in result.stdout
