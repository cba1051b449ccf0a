"""The right to object at inference (issue 14, point 5): a listed subject is refused, unscored, and audited.

Through the app (TestClient, the predict fast path) over the published 'demo'
model; the served module is wrapped to record its calls, so "never scored"
is checked, not assumed. Time is a settable clock: nothing sleeps.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from fedguard.cli import app as cli
from lifecycle.errors import ConfigurationError, NotFoundError, StateError
from lifecycle.governance.objections import SUBJECT_KEY_NAME, ObjectionStore
from lifecycle.governance.stages import StageStore
from lifecycle.home import Home
from lifecycle.registry import Registry, VersionRecord
from lifecycle.registry.tables import AuditEvent
from serving.app import create_app
from serving.guards.keys import CreatedKey, create_key
from serving.guards.objections import REFUSAL_ACTION
from serving.runtime import ModelRuntime
from serving.settings import DEFAULT_OBJECTION_MESSAGE, ServingSettings
from tests.serving.conftest import bearer

PREDICT = "/v1/models/demo/predict"
ROWS = [[0.5, -1.0, 2.0, 0.0], [3.0, 3.0, -3.0, 1.0]]
LISTED = "MRN-000123"
UNLISTED = "MRN-999999"
runner = CliRunner()


class Clock:
    """A settable clock (seconds): the app's refresh intervals read it, so nothing sleeps."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Recording:
    """The served model's runtime, wrapped: counts model runs (a refused request must cause none)."""

    def __init__(self, inner: ModelRuntime) -> None:
        self.inner = inner
        self.calls = 0

    @property
    def num_classes(self) -> int:
        return self.inner.num_classes

    def logits(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.inner.logits(batch)


@dataclasses.dataclass
class Served:
    client: TestClient
    app: FastAPI
    module: Recording
    clock: Clock
    key: CreatedKey
    store: ObjectionStore

    def predict(self, subject: str | None = None, **extra: Any) -> Any:
        body: dict[str, Any] = {"instances": ROWS, **extra}
        if subject is not None:
            body["subject_id"] = subject
        return self.client.post(PREDICT, json=body, headers=bearer(self.key))


def serve(registry: Registry, settings: ServingSettings) -> Iterator[Served]:
    clock = Clock()
    app = create_app(registry, settings, clock=clock)
    router = app.state.fedguard.deployments
    live = router.live["demo"]
    module = Recording(live.stable.runtime)
    router.live["demo"] = dataclasses.replace(live, stable=dataclasses.replace(live.stable, runtime=module))
    with TestClient(app) as client:
        yield Served(client, app, module, clock, create_key(registry, "predict", "app", actor="test"),
                     ObjectionStore(registry))


@pytest.fixture
def listed(registry: Registry, published: VersionRecord) -> Registry:
    """'demo' published, LISTED objecting to it in the default environment."""
    ObjectionStore(registry).add("demo", "default", [LISTED], reason="letter 2026-12-01", actor="cli:dpo")
    return registry


@pytest.fixture
def served(listed: Registry) -> Iterator[Served]:
    yield from serve(listed, ServingSettings(quota_rate=1000, quota_burst=1000))


def refusals(registry: Registry) -> list[AuditEvent]:
    with Session(registry.engine) as session:
        events = session.exec(select(AuditEvent).order_by(col(AuditEvent.id))).all()
    return [e for e in events if e.action == REFUSAL_ACTION]


def test_a_listed_subject_is_refused_unscored_and_others_are_scored(served: Served, listed: Registry) -> None:
    refused = served.predict(LISTED)
    assert refused.status_code == 403
    assert refused.json() == {"error": {"code": "objection", "message": DEFAULT_OBJECTION_MESSAGE}}
    assert served.module.calls == 0
    for subject in (UNLISTED, None):
        answered = served.predict(subject)
        assert answered.status_code == 200 and answered.json()["model"] == "demo"
        assert len(answered.json()["predictions"]) == len(ROWS)
    assert served.module.calls == 2  # the recorder is on the path: the refusal really skipped the model
    assert 'fedguard_objection_refusals_total{model="demo"} 1.0' in served.client.get("/metrics").text


def test_the_refusal_is_audited_with_the_digest_never_the_instances(served: Served, listed: Registry) -> None:
    served.predict(LISTED)
    (event,) = refusals(listed)
    details = json.loads(event.details_json)
    assert details == {"environment": "default", "key_id": served.key.info.key_id,
                       "subject_digest": served.store.digest(LISTED)}
    assert (event.subject, event.actor) == ("demo", f"apikey:{served.key.info.key_id}")
    with Session(listed.engine) as session:
        trail = " ".join(e.details_json for e in session.exec(select(AuditEvent)).all())
    assert LISTED not in trail and "0.5" not in trail and "instances" not in trail


def test_the_status_and_message_are_the_operators(listed: Registry) -> None:
    settings = ServingSettings(objection_status=451, objection_message="refused: objection on file")
    for served in serve(listed, settings):
        refused = served.predict(LISTED)
        assert refused.status_code == 451
        assert refused.json() == {"error": {"code": "objection", "message": "refused: objection on file"}}
        assert served.module.calls == 0


def test_a_subject_added_while_serving_is_refused_after_the_refresh(served: Served) -> None:
    assert served.predict(UNLISTED).status_code == 200
    served.store.add("demo", "default", [UNLISTED], reason="letter 2026-12-02", actor="cli:dpo")  # another machine
    served.clock.now += 0.1  # within deploy_refresh_seconds (0.25): the list in memory still holds
    assert served.predict(UNLISTED).status_code == 200
    served.clock.now += 0.2  # past it: the next request naming a subject re-reads the list first
    assert served.predict(UNLISTED).status_code == 403
    served.store.remove("demo", "default", [UNLISTED], reason="consent given again", actor="cli:dpo")
    served.clock.now += 0.3
    assert served.predict(UNLISTED).status_code == 200
    assert served.predict(LISTED).status_code == 403


def test_an_unreadable_registry_refuses_subjects_with_503_and_serves_the_rest(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    guard = served.app.state.fedguard.objections

    def down(environment: str) -> None:
        raise StateError("registry unreachable")

    monkeypatch.setattr(guard.store, "revisions", down)
    served.clock.now += 1.0
    assert served.predict(UNLISTED).status_code == 503  # never scored on a list it could not check
    assert served.predict().status_code == 200
    assert served.module.calls == 1


def test_a_server_without_the_subject_key_never_scores_a_subject(listed: Registry, published: VersionRecord,
                                                                 tmp_path: Path) -> None:
    key = listed.home.keys / SUBJECT_KEY_NAME
    saved = key.read_bytes()
    key.unlink()  # a replica given its own FEDGUARD_HOME, without the key
    with pytest.raises(StateError, match="no subject key"):
        create_app(listed, ServingSettings())  # at start: the server does not start (exit 3)
    key.write_bytes(saved)
    ObjectionStore(listed).remove("demo", "default", [LISTED], reason="lifted", actor="cli:dpo")
    for served in serve(listed, ServingSettings()):
        key.unlink()  # the server started with no list, so it holds no key yet; a list arrives from elsewhere
        elsewhere = Registry(listed.engine, Home(tmp_path / "elsewhere").ensure())
        (elsewhere.home.keys / SUBJECT_KEY_NAME).write_bytes(saved)
        ObjectionStore(elsewhere).add("demo", "default", [UNLISTED], reason="letter", actor="cli:dpo")
        served.clock.now += 1.0
        assert served.predict(UNLISTED).status_code == 503
        assert served.predict().status_code == 200 and served.module.calls == 1


def test_a_failed_audit_write_still_refuses_and_is_logged(served: Served, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    guard = served.app.state.fedguard.objections

    def broken() -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(guard.registry, "transaction", broken)
    with caplog.at_level(logging.ERROR, logger="fedguard.serving"):
        refused = served.predict(LISTED)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "objection"
    assert "disk full" not in refused.text and served.module.calls == 0
    assert "could not audit the objection refusal" in caplog.text and LISTED not in caplog.text


def test_a_refusal_takes_a_quota_token(listed: Registry) -> None:
    for served in serve(listed, ServingSettings(quota_rate=0.001, quota_burst=1)):
        assert served.predict(LISTED).status_code == 403
        assert served.predict(LISTED).status_code == 429
        assert served.module.calls == 0


def test_another_environment_has_its_own_list(listed: Registry) -> None:
    ObjectionStore(listed).add("demo", "clinic-north", [UNLISTED], reason="letter", actor="cli:dpo")
    StageStore(listed).promote("demo", 1, to="production", environment="clinic-north", actor="user:ops")
    for served in serve(listed, ServingSettings(environment="clinic-north")):
        assert served.predict(LISTED).status_code == 200  # listed in 'default' only
        assert served.predict(UNLISTED).status_code == 403


@pytest.mark.parametrize("subject", ["", "x" * 129, "MRN\n1", "MRN-é", 123, ["MRN-1"]],
                         ids=["empty", "long", "newline", "non-ascii", "number", "list"])
def test_a_malformed_subject_id_is_a_422(served: Served, subject: object) -> None:
    response = served.client.post(PREDICT, json={"instances": ROWS, "subject_id": subject},
                                  headers=bearer(served.key))
    assert response.status_code == 422
    assert response.json()["error"] == {"code": "invalid_input",
                                        "message": "'subject_id' must be a string of 1-128 printable ASCII "
                                                   "characters"}
    assert served.module.calls == 0


def test_the_openapi_document_states_the_field(served: Served) -> None:
    field = served.client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]["properties"][
        "subject_id"]
    assert {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[ -~]{1,128}$"} in field["anyOf"]


def objections(*args: str) -> Any:
    result = runner.invoke(cli, ["objections", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if "--json" in args else result.stdout


def test_the_command_line_adds_lists_and_removes(published: VersionRecord, registry: Registry,
                                                 tmp_path: Path) -> None:
    ids = tmp_path / "ids.csv"
    ids.write_text("ward,subject\nB,MRN-1\nC,MRN-2\nC,MRN-1\n")
    added = objections("add", "demo", "--file", str(ids), "--column", "subject", "--reason", "letters", "--json")
    assert added == {"model": "demo", "environment": "default", "added": 2, "already_listed": 0, "total": 2}
    text = objections("add", "demo", "--subject", "MRN-3", "--subject", "MRN-1", "--reason", "call",
                      "--env", "default")
    assert "1 subject exception(s) added, 1 already listed; 3 in all" in text
    listing = objections("list", "demo", "--json")
    assert listing["count"] == 3 and [b["count"] for b in listing["batches"]] == [2, 1]
    table = objections("list", "demo")
    assert "letters" in table and "MRN-" not in table and "MRN-" not in json.dumps(listing)
    (tmp_path / "lift.txt").write_text("MRN-1\n\n  MRN-9  \n")
    removed = objections("remove", "demo", "--file", str(tmp_path / "lift.txt"), "--reason", "consent", "--json")
    assert removed == {"model": "demo", "environment": "default", "removed": 1, "not_listed": 1, "total": 2}


def test_the_command_line_exit_codes(published: VersionRecord, registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_text("MRN-1\nMRN\t2\n")
    (tmp_path / "latin1.txt").write_bytes("MRN-é\n".encode("latin-1"))
    cases: list[tuple[list[str], type[Exception], int, str]] = [
        (["add", "nope", "--subject", "MRN-1", "--reason", "r"], NotFoundError, 4, "no model named 'nope'"),
        (["add", "demo", "--file", str(tmp_path / "bad.txt"), "--reason", "r"], ConfigurationError, 2, "line 2"),
        (["add", "demo", "--file", str(tmp_path / "latin1.txt"), "--reason", "r"], ConfigurationError, 2, "UTF-8"),
        (["add", "demo", "--file", str(tmp_path / "missing.csv"), "--reason", "r"], ConfigurationError, 2,
         "cannot read"),
        (["add", "demo", "--file", str(tmp_path / "bad.txt"), "--column", "id", "--reason", "r"],
         ConfigurationError, 2, "no column 'id'"),
        (["add", "demo", "--reason", "r"], ConfigurationError, 2, "--subject ID"),
        (["add", "demo", "--subject", "MRN\x01", "--reason", "r"], ConfigurationError, 2, "is not 1-128"),
        (["list", "demo", "--env", "Bad Env"], ConfigurationError, 2, "invalid environment name"),
    ]
    for args, error, code, message in cases:
        result = runner.invoke(cli, ["objections", *args])
        assert isinstance(result.exception, error), (args, result.output)
        assert result.exception.exit_code == code and message in str(result.exception)  # type: ignore[attr-defined]
        assert "MRN\t2" not in str(result.exception)
    assert ObjectionStore(registry).count("demo", "default") == 0
