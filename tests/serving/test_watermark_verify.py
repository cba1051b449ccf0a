"""The admin route that runs the owner's committed trigger set through the served model.

Admin scope only (a predict key is refused), audited with counts and the
commitment but no trigger, exempt from the feature ranges that refuse the
same triggers on the predict route, and refusing a secret the signed ML-BOM
does not commit to. The last test runs a real ``fedguard serve``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from lifecycle.packaging import publish_model
from lifecycle.registry import Registry, VersionRecord
from lifecycle.registry.tables import AuditEvent
from serving.app import create_app
from serving.guards.keys import create_key
from serving.settings import ServingSettings
from tests.conftest import make_publication
from tests.served import wait_served
from tests.serving.conftest import bearer
from watermark import commitment, create_scheme, save_secret, secret_path

FEATURES = 8
ROOT = Path(__file__).resolve().parents[2]
Bounds = dict[str, dict[str, tuple[float | None, float | None]]]
RANGES: Bounds = {"demo": {f"f{i}": (-3.0, 3.0) for i in range(FEATURES)}}  # the triggers sit at ±5: out of range


@pytest.fixture
def marked(registry: Registry) -> tuple[VersionRecord, Path, torch.Tensor]:
    """A published trigger-set-watermarked model, its secret file, and the secret's triggers."""
    publication = make_publication(features=FEATURES)
    scheme = create_scheme("trigger-set", size=24, anchor_batch=64)
    secret = scheme.generate(publication.model, publication.spec, generator=torch.Generator().manual_seed(0))
    report = scheme.embed(publication.model, secret, generator=torch.Generator().manual_seed(0))
    digest = save_secret(secret, secret_path(registry.home.keys, commitment(secret)))
    mark = {"scheme": scheme.name, "commitment": digest, **scheme.measure(report.model, secret).to_dict()}
    record = publish_model(registry, dataclasses.replace(publication, model=report.model, watermark=mark))
    return record, secret_path(registry.home.keys, digest), secret.inputs


def body(path: Path) -> dict[str, str]:
    return {"secret": base64.b64encode(path.read_bytes()).decode()}


def route(record: VersionRecord) -> str:
    return f"/v1/admin/models/{record.name}/versions/{record.version}/watermark/verify"


def verifications(registry: Registry) -> list[AuditEvent]:
    with Session(registry.engine) as session:
        return [e for e in session.exec(select(AuditEvent).order_by(col(AuditEvent.id))).all()
                if e.action == "watermark.verified"]


def test_admin_verifies_the_served_model_and_the_call_is_audited(
    registry: Registry, marked: tuple[VersionRecord, Path, torch.Tensor]
) -> None:
    record, secret_file, triggers = marked
    admin, predict = create_key(registry, "admin", "ops", actor="test"), create_key(registry, "predict", "app",
                                                                                  actor="test")
    app = create_app(registry, ServingSettings(feature_ranges=RANGES))
    with TestClient(app) as client:
        refused = client.post(f"/v1/models/{record.name}/predict", json={"instances": triggers[:2].tolist()},
                              headers=bearer(predict))
        assert refused.status_code == 422  # the predict route's range guard refuses the triggers
        assert client.post(route(record), json=body(secret_file), headers=bearer(predict)).status_code == 403
        assert client.post(route(record), json=body(secret_file)).status_code == 401
        answer = client.post(route(record), json=body(secret_file), headers=bearer(admin))
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["verified"] is True and result["correct"] == result["n"] == 24
    assert result["commitment"] == record.watermark["commitment"] and result["p_value"] < 1e-6
    [event] = verifications(registry)
    assert event.actor == f"apikey:{admin.info.key_id}" and event.subject == record.ref
    details = json.loads(event.details_json)
    assert details["correct"] == 24 and details["verified"] is True and "inputs" not in event.details_json
    assert str(round(float(triggers[0, 0]), 3)) not in event.details_json


def test_a_secret_the_bom_does_not_commit_to_is_refused(
    registry: Registry, marked: tuple[VersionRecord, Path, torch.Tensor], tmp_path: Path
) -> None:
    record, _, _ = marked
    publication = make_publication(features=FEATURES)
    forged = create_scheme("trigger-set", size=24).generate(publication.model, publication.spec,
                                                            generator=torch.Generator().manual_seed(9))
    forged_file = tmp_path / "forged.safetensors"
    save_secret(forged, forged_file)
    admin = create_key(registry, "admin", "ops", actor="test")
    with TestClient(create_app(registry, ServingSettings())) as client:
        answer = client.post(route(record), json=body(forged_file), headers=bearer(admin))
        garbage = client.post(route(record), json={"secret": "bm90IGEgc2VjcmV0"}, headers=bearer(admin))
        missing = client.post(f"/v1/admin/models/demo/versions/{record.version + 1}/watermark/verify",
                              json=body(forged_file), headers=bearer(admin))
    assert answer.status_code == 422 and "commitment" in answer.json()["error"]["message"]
    assert garbage.status_code == 422 and missing.status_code == 404
    assert verifications(registry) == []


@pytest.mark.integration
def test_verification_through_a_real_fedguard_serve(
    registry: Registry, marked: tuple[VersionRecord, Path, torch.Tensor], fedguard_home: Path, tmp_path: Path
) -> None:
    record, secret_file, _ = marked
    admin, predict = create_key(registry, "admin", "ops", actor="test"), create_key(registry, "predict", "app",
                                                                                  actor="test")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGUARD_")}
    env.update(PYTHONPATH=str(ROOT), FLWR_TELEMETRY_ENABLED="0", FEDGUARD_HOME=str(fedguard_home),
               FEDGUARD_SERVE_FEATURE_RANGES=json.dumps(RANGES))
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "fedguard.cli", "serve", "--host", "127.0.0.1", "--port",
                                    "0"], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = wait_served(process, log, 120)
        answer = httpx.post(url + route(record), json=body(secret_file), headers=bearer(admin), timeout=30)
        cli = [sys.executable, "-m", "fedguard.cli", "watermark", "verify", record.ref, "--server", url, "--secret",
               str(secret_file), "--json"]
        by_cli = subprocess.run(cli, env={**env, "FEDGUARD_API_KEY": admin.key}, cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        refused = subprocess.run(cli, env={**env, "FEDGUARD_API_KEY": predict.key}, cwd=ROOT, capture_output=True,
                                 text=True, timeout=120)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["verified"] is True
    assert by_cli.returncode == 0, by_cli.stderr
    assert json.loads(by_cli.stdout.splitlines()[-1])["correct"] == 24
    assert refused.returncode == 7 and "403" in refused.stderr  # a predict key: authorization failed
    assert len(verifications(registry)) == 2
    assert base64.b64encode(secret_file.read_bytes()).decode()[:40] not in log.read_text(errors="replace")
