"""``fedguard audit trace``: a small history walked back at three instants (issue 14, points 7 and 8).

The history is built by hand, as the governance code will write it: two
published versions, deployments in ``clinic-north`` (adopt, canary, promote,
kill), a failed gate with a signed override (Ed25519) and its stage move, a
consent withdrawal that taints both versions, and a retrained version 3 that
supersedes version 2. Governance rows are inserted directly: the tables are
fixed, the code that fills them is built elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from fedguard.cli import main
from lifecycle import audit
from lifecycle.audit import actors
from lifecycle.audit.report import EXPORTED, complete, to_html, to_json
from lifecycle.audit.trace import gather, parse_instant
from lifecycle.audit.trace_version import verify_approval
from lifecycle.errors import ConfigurationError
from lifecycle.governance.approvals import make_statement, signed_row
from lifecycle.governance.operator import ApproverKey
from lifecycle.governance.tables import Approval, ConsentWithdrawal, GateDecision, ModelTaint, StageEvent
from lifecycle.packaging import publish_model
from lifecycle.registry import DeploymentStore, Registry
from lifecycle.registry.tables import AuditEvent, ModelVersion
from lifecycle.settings import Settings, get_settings
from tests.conftest import make_publication

ENV = "clinic-north"
HOSTILE = "<script>alert('pwned')</script> urgent fix"


@dataclass(frozen=True)
class History:
    """The registry and the three instants the story is told at."""

    registry: Registry
    home: Path
    stable_v1: datetime
    """Version 1 serves alone; nothing has happened to version 2 yet."""
    promoted_v2: datetime
    """Version 2 serves after an override of its failed gate; consent still intact."""
    killed: datetime
    """Site-0 withdrew consent, both versions are tainted, the model is killed, version 3 supersedes version 2."""


def _now() -> datetime:
    return datetime.now(UTC)


def _version_id(registry: Registry, version: int) -> int:
    with Session(registry.engine) as session:
        row = session.exec(select(ModelVersion).where(ModelVersion.version == version)).one()
        assert row.id is not None
        return row.id


def _version_row(registry: Registry, version: int) -> ModelVersion:
    with Session(registry.engine) as session:
        return session.exec(select(ModelVersion).where(ModelVersion.version == version)).one()


def signed_approval(key: ApproverKey, row: ModelVersion, *, kind: str, reason: str) -> Approval:
    """An approval as ``fedguard models approve`` stores it: Ed25519 over the canonical statement."""
    assert row.id is not None
    statement = make_statement(key, kind, "demo", row, stage="production", environment=ENV, reason=reason)
    return signed_row(key, statement, row.id)


def enroll(registry: Registry, name: str, *fingerprints: tuple[str, datetime]) -> None:
    """Rows as ``fedguard site enroll`` (and ``rotate``) write them: the site, then one credential per issue."""
    with registry.transaction() as session:
        db = session.connection()
        db.execute(text("INSERT INTO federation_site (name, status, created_at) VALUES (:n, 'active', :t)"),
                   {"n": name, "t": fingerprints[0][1]})
        site_id = db.execute(text("SELECT id FROM federation_site WHERE name = :n"), {"n": name}).scalar_one()
        for n, (fingerprint, issued) in enumerate(fingerprints):
            db.execute(text(
                "INSERT INTO site_credential (site_id, cert_serial, cert_fingerprint, node_public_key, "
                "node_key_fingerprint, status, issued_at, not_after, revoked_reason) VALUES "
                "(:s, :serial, :fp, 'PEM', :fp, 'active', :t, :t, '')"),
                {"s": site_id, "serial": f"{name}-{n}", "fp": fingerprint, "t": issued})


def build_history(registry: Registry) -> History:
    """The story: v1 stable, v2 forced through a failed gate and promoted, consent withdrawn, killed, v3 retrained."""
    operator = actors.actor()
    enroll(registry, "site-0", ("a1" * 32, datetime(2026, 1, 5, tzinfo=UTC)),
           ("b2" * 32, datetime(2099, 1, 1, tzinfo=UTC)))  # rotated after every run here: the first key trained
    publish_model(registry, make_publication())
    store = DeploymentStore(registry, ENV)
    store.adopt("demo", actor=str(actors.service("serve")))
    stable_v1 = _now()
    publish_model(registry, make_publication(seed=1))
    v1, v2 = _version_id(registry, 1), _version_id(registry, 2)
    key = ApproverKey.generate("dr-okafor")
    version_2 = _version_row(registry, 2)
    with registry.transaction() as session:
        gate = GateDecision(model_version_id=v2, stage="production", environment=ENV, trigger="promote", passed=False,
                            criteria_json=json.dumps([
                                {"criterion": "min-accuracy", "passed": False, "measured": 0.5, "threshold": 0.9,
                                 "evidence": "metrics.accuracy of the signed ML-BOM"},
                                {"criterion": "consent-clean", "passed": True, "measured": True, "threshold": True,
                                 "evidence": "no consent withdrawal covers this version's lineage"}]),
                            actor=operator)
        session.add(gate)
        session.flush()
        approval = signed_approval(key, version_2, kind="override", reason=HOSTILE)
        session.add(approval)
        who = str(actors.approver(approval.approver, "dr-okafor"))
        session.add(StageEvent(model_version_id=v2, environment=ENV, from_stage="registered", to_stage="production",
                               actor=who, reason=HOSTILE, override=True, gate_decision_id=gate.id))
        audit.record(session, "stage.override", actor=who, subject="demo:2",
                     details={"environment": ENV, "to": "production", "reason": HOSTILE})
    store.canary("demo", 2, 10.0, actor=operator)
    store.promote("demo", actor=operator)
    promoted_v2 = _now()
    with registry.transaction() as session:
        withdrawal = ConsentWithdrawal(site="site-0", scope="site", reason="consent withdrawn 2026-12-01",
                                       actor=operator, source="operator")
        session.add(withdrawal)
        session.flush()
        assert withdrawal.id is not None
        session.add_all([ModelTaint(model_version_id=v, withdrawal_id=withdrawal.id) for v in (v1, v2)])
        audit.record(session, "consent.withdrawn", actor=operator, subject="site:site-0",  # as ConsentStore does
                     details={"scope": "site"})
    store.kill("demo", actor=operator, reason="lineage holds withdrawn data")
    publish_model(registry, make_publication(seed=2))
    with registry.transaction() as session:
        v3 = session.exec(select(ModelVersion).where(ModelVersion.version == 3)).one()
        v3.supersedes = 2
        session.add(v3)
    return History(registry, registry.home.root, stable_v1, promoted_v2, _now())


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    registry = Registry.open(Settings(home=tmp_path_factory.mktemp("trace") / "home", database_url=None))
    yield build_history(registry)
    registry.engine.dispose()


def trace(history: History, at: datetime, **kwargs: Any) -> dict[str, Any]:
    return complete(gather(history.registry, "demo", environment=ENV, at=at, **kwargs))


def test_before_anything_happened_version_1_serves_clean(history: History) -> None:
    report = trace(history, history.stable_v1)
    event = report["serving"][0]["in_force"]
    assert (event["stable_version"], event["killed"], event["shares"]) == (1, False, {"1": 100.0})
    [story] = report["versions"]
    assert story["version"] == 1 and story["signature"]["verified"] and story["bom"]["lineage_check"]["agrees"]
    assert story["overrides"] == 0 and not story["consent"]["tainted"]
    assert {(g["stage"], g["trigger"], g["passed"]) for g in story["gates"]} == {  # evaluated at publication
        ("staging", "publish", True), ("production", "publish", True)}
    assert story["consent"]["after_question"] == {"withdrawals": 1, "taints": 1}  # later facts are said, not mixed in
    assert [s["site"] for s in story["sites"]] == ["site-0", "site-1"] and story["sites"][0]["epsilon"] == 1.5
    assert [s["identity"] for s in story["sites"]] == ["site:site-0/key:a1a1a1a1a1a1a1a1", None]  # site-1: simulated
    assert story["bom"]["sha256"] and story["bom"]["dp"]["target_epsilon"] == 3.0
    assert "answering requests in clinic-north" in report["summary"][0]["text"]
    assert [d["in_force"] for d in report["deployments"]].count(True) == 1


def test_after_the_override_version_2_serves_and_the_override_is_flagged(history: History) -> None:
    report = trace(history, history.promoted_v2)
    assert report["serving"][0]["in_force"]["stable_version"] == 2
    [story] = report["versions"]
    assert story["version"] == 2 and story["overrides"] == 2  # the stage move and the signed override
    [gate] = [g for g in story["gates"] if g["trigger"] != "publish"]
    assert not gate["passed"] and gate["criteria"][0] == {
        "criterion": "min-accuracy", "passed": False, "measured": 0.5, "threshold": 0.9,
        "evidence": "metrics.accuracy of the signed ML-BOM"}
    [approval] = story["approvals"]
    assert approval["override"] and approval["verified"], approval["verification"]
    assert approval["identity"].startswith("approver:dr-okafor/ed25519:")
    assert story["stage_events"][0]["override"] and story["stages"] == [{"environment": ENV, "stage": "production"}]
    assert not story["consent"]["tainted"] and story["superseded_by"] == []
    assert any(e["override"] and e["action"] == "stage.override" for e in report["audit"]["events"])
    assert any(s["status"] == "warn" and s["text"].startswith("OVERRIDE") for s in report["summary"])
    assert [d["action"] for d in report["deployments"]] == ["adopt", "canary", "promote", "kill"]


def test_after_the_withdrawal_the_model_is_killed_and_version_2_tainted(history: History) -> None:
    report = trace(history, history.killed)
    state = report["serving"][0]["in_force"]
    assert state["killed"] and state["kill_mode"] == "503" and state["shares"] == {}
    [story] = report["versions"]
    assert story["version"] == 2 and story["consent"]["tainted"]
    assert [(t["site"], t["scope"]) for t in story["consent"]["taints"]] == [("site-0", "site")]
    assert story["superseded_by"][0]["version"] == 3
    assert report["summary"][0]["status"] == "bad" and "switched off" in report["summary"][0]["text"]
    assert any("TAINTED" in s["text"] for s in report["summary"])
    [withdrawn] = [e for e in report["audit"]["events"] if e["action"] == "consent.withdrawn"]
    assert withdrawn["subject"] == "site:site-0"  # a site's consent events name it "site:NAME"
    assert report["audit"]["chain"]["verified"]
    assert all(e["hash"] and len(e["hash"]) == 64 for e in report["audit"]["events"])


def test_the_story_of_one_version(history: History) -> None:
    report = complete(gather(history.registry, "demo", version=3, at=history.killed))
    assert [s["version"] for s in report["versions"]] == [3] and report["versions"][0]["supersedes"] == 2
    assert report["question"]["environments"] == [ENV] and report["serving"][0]["answering"] == [2]
    assert "version 3 of demo" in report["title"]
    early = complete(gather(history.registry, "demo", version=3, at=history.promoted_v2))
    assert not early["versions"][0]["published_at_question"] and "not yet published" in early["summary"][1]["text"]


def test_html_is_self_contained_and_escapes_registry_values(history: History) -> None:
    page = to_html(trace(history, history.promoted_v2)).decode()
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page
    assert not any(marker in page for marker in ("<link", "src=", "url(", "http://", "https://", "@import"))
    assert 'class="override"' in page and "⚠ OVERRIDE" in page  # red, and in words
    assert "Glossary" in page and "ε (epsilon)" in page and "Appendix: evidence hashes" in page
    json_report = json.loads(to_json(trace(history, history.promoted_v2)))
    assert json_report["versions"][0]["approvals"][0]["reason"] == HOSTILE  # JSON keeps the value as it was


def test_an_altered_approval_no_longer_verifies(history: History) -> None:
    v1, v2 = _version_row(history.registry, 1), _version_row(history.registry, 2)
    key = ApproverKey.generate("dr-okafor")
    approval = signed_approval(key, v1, kind="approve", reason="looks good")
    assert verify_approval(approval, "demo", v1)[0]
    for update, differs in (({"reason": "ship it"}, "reason"), ({"kind": "override"}, "action"),
                            ({"approver_name": "dr-mallory"}, "approver_name"),
                            ({"model_version_id": v2.id}, "artifact_digest, version")):
        verified, detail = verify_approval(approval.model_copy(update=update), "demo",
                                           v2 if "model_version_id" in update else v1)
        assert not verified and f"({differs} differ" in detail, detail
    forged = approval.model_copy(update={"statement_json": approval.statement_json.replace("good", "fine")})
    assert not verify_approval(forged, "demo", v1)[0]
    other = ApproverKey.generate("dr-okafor")
    verified, detail = verify_approval(approval.model_copy(update={"public_key_pem": other.public_pem}), "demo", v1)
    assert not verified and "does not verify" in detail


def test_the_report_shows_a_re_pointed_or_renamed_approval_as_not_verified(tmp_path: Path) -> None:
    registry = Registry.open(Settings(home=tmp_path / "home", database_url=None))
    try:
        publish_model(registry, make_publication())
        publish_model(registry, make_publication(seed=1))
        DeploymentStore(registry, ENV).adopt("demo", actor=str(actors.service("serve")))
        v1, v2 = _version_row(registry, 1), _version_row(registry, 2)
        key = ApproverKey.generate("dr-okafor")
        with registry.transaction() as session:
            moved = signed_approval(key, v1, kind="approve", reason="for version 1")
            moved.model_version_id = int(v2.id or 0)  # re-pointed in the database to another version
            renamed = signed_approval(key, v2, kind="approve", reason="for version 2")
            renamed.approver_name = "dr-mallory"
            session.add_all([signed_approval(key, v2, kind="approve", reason="good"), moved, renamed])
        [story] = complete(gather(registry, "demo", version=2))["versions"]
        assert [(a["reason"], a["verified"]) for a in story["approvals"]] == [
            ("good", True), ("for version 1", False), ("for version 2", False)]
        assert "does not match its signed statement" in story["approvals"][1]["verification"]
        assert "approver_name differs" in story["approvals"][2]["verification"]
    finally:
        registry.engine.dispose()


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-03T14:00Z", datetime(2026, 12, 3, 14, tzinfo=UTC)),
    ("2026-12-03T15:00+01:00", datetime(2026, 12, 3, 14, tzinfo=UTC)),
    ("2026-12-03", datetime(2026, 12, 3, tzinfo=UTC)),
])
def test_times_are_iso_8601_with_a_zone(text: str, expected: datetime) -> None:
    assert parse_instant(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-12-03T14:00", "2026-13-03", ""])
def test_a_malformed_time_is_refused(text: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_instant(text)


def fedguard(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], home: Path,
             *args: str) -> tuple[int, str, str]:
    """Run the real ``fedguard`` entry point (its error mapping included): exit code, stdout, stderr."""
    monkeypatch.setenv("FEDGUARD_HOME", str(home))
    monkeypatch.delenv("FEDGUARD_DATABASE_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(sys, "argv", ["fedguard", *args])
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as stopped:
            main()
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr()
    return int(stopped.value.code or 0), out.out, out.err


def test_exported_reports_have_their_hash_in_the_audit_trail(
        history: History, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    html_path, json_path = tmp_path / "report.html", tmp_path / "report.json"
    code, _, err = fedguard(monkeypatch, capsys, history.home, "audit", "trace", "--model", "demo", "--env", ENV,
                            "--at", history.promoted_v2.isoformat(), "--html", str(html_path), "--json", str(json_path))
    assert code == 0, err
    with Session(history.registry.engine) as session:
        events = session.exec(select(AuditEvent).where(AuditEvent.action == EXPORTED)).all()
    exported = {json.loads(e.details_json)["format"]: json.loads(e.details_json) for e in events[-2:]}
    for fmt, path in (("html", html_path), ("json", json_path)):
        assert exported[fmt]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert exported[fmt]["model"] == "demo" and exported[fmt]["at"] == history.promoted_v2.isoformat()
    assert events[-1].subject == "demo" and events[-1].actor.startswith("user:")
    assert json.loads(json_path.read_text())["versions"][0]["version"] == 2
    code, out, _ = fedguard(monkeypatch, capsys, history.home, "audit", "trace", "--model", "demo", "--env", ENV)
    assert code == 0 and "switched off in clinic-north" in out


@pytest.mark.parametrize(("args", "code", "words"), [
    (["--model", "nope"], 4, "no model named 'nope'"),
    (["--model", "demo", "--at", "14:00 yesterday"], 2, "malformed time"),
    (["--model", "demo", "--at", "2000-01-01"], 2, "nothing was recorded before"),
    (["--model", "demo", "--env", "clinic-south"], 4, "its environments: clinic-north"),
    (["--model", "demo", "--version", "9"], 4, "has no version 9"),
])
def test_bad_input_is_one_line_with_its_exit_code(history: History, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str], args: list[str], code: int,
                                                  words: str) -> None:
    got, _, err = fedguard(monkeypatch, capsys, history.home, "audit", "trace", *args)
    assert got == code and words in err and err.strip().count("\n") == 0, err


@pytest.mark.postgres
@pytest.mark.integration
def test_trace_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    registry = Registry.open(Settings(home=tmp_path / "home", database_url=pg_url))
    try:
        enroll(registry, "site-1", ("c3" * 32, datetime(2026, 1, 5, tzinfo=UTC)))
        publish_model(registry, make_publication())
        store = DeploymentStore(registry, ENV)
        store.adopt("demo", actor="serve")  # a legacy actor string, as rows written before identities hold
        serving = _now()
        with registry.transaction() as session:
            withdrawal = ConsentWithdrawal(site="site-1", scope="records", record_count=3, records_digest="ab" * 32,
                                           actor=actors.actor(), source="site")
            session.add(withdrawal)
            session.flush()
            assert withdrawal.id is not None
            session.add(ModelTaint(model_version_id=_version_id(registry, 1), withdrawal_id=withdrawal.id))
        store.kill("demo", actor=actors.actor(), reason="withdrawn records")
        before, after = (complete(gather(registry, "demo", at=t)) for t in (serving, _now()))
        assert not before["serving"][0]["in_force"]["killed"] and not before["versions"][0]["consent"]["tainted"]
        assert after["serving"][0]["in_force"]["killed"] and after["versions"][0]["consent"]["tainted"]
        assert before["deployments"][0]["actor"]["described"].startswith("fedguard service 'serve'")
        assert after["audit"]["chain"]["verified"]
        assert after["versions"][0]["sites"][1]["identity"] == "site:site-1/key:c3c3c3c3c3c3c3c3"
    finally:
        registry.engine.dispose()
