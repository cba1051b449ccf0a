"""The README's flow end to end: simulate → verify → key → serve → predict over HTTP."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
import pytest
import torch

from lifecycle.artifacts import load_model
from lifecycle.bom import read_bom, read_lineage
from tests.e2e.conftest import run_cli, serve

pytestmark = [pytest.mark.integration,
              pytest.mark.usefixtures("shared_ray")]  # one Ray head per pytest worker, not one per run


def _test_rows(run_dir: Path) -> list[list[float]]:
    with (run_dir / "data" / "test.csv").open() as handle:
        rows = list(csv.reader(handle))[1:]
    return [[float(v) for v in row[:-1]] for row in rows[:20]]


def test_simulate_verify_serve_predict(cli_home: Path) -> None:
    result = run_cli(cli_home, "simulate", "--sites", "3", "--rounds", "2", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("model", "version", "artifact", "signature_path", "public_key", "accuracy", "baseline_accuracy",
                "epsilon", "delta", "secure_aggregation", "watermark", "signature", "seconds"):
        assert key in outcome, key
    assert outcome["secure_aggregation"] == "secagg+"
    assert outcome["signature"]["verified"] is True
    assert outcome["watermark"]["verified"] is True and outcome["watermark"]["p_value"] < 1e-6
    assert set(outcome["epsilon"]) == {"site-0", "site-1", "site-2"}
    assert all(0 < eps <= 3.0 * 1.001 for eps in outcome["epsilon"].values())
    assert outcome["accuracy"] > 0.8
    assert "secure RNG is OFF" in result.stderr

    verified = run_cli(cli_home, "models", "verify", f"{outcome['model']}:{outcome['version']}", "--json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["watermark"]["verified"] is True

    key = json.loads(run_cli(cli_home, "keys", "create", "--scope", "predict", "--json").stdout)["key"]
    rows = _test_rows(Path(outcome["run_dir"]))
    model, _ = load_model(Path(outcome["artifact"]))
    with torch.no_grad():
        expected = model(torch.tensor(rows)).argmax(1).tolist()
    bom = read_lineage(read_bom(Path(outcome["artifact"])))
    labels = bom["feature_schema"]["labels"]
    parity = bom["serving_format"]["parity"]  # the served ONNX export, checked on the coordinator's held-out set
    assert parity["set"] == "held-out" and parity["rows"] > 20 and parity["max_abs_diff"] <= parity["tolerance"]
    assert {site["dp"]["clipping"] for site in bom["training"]["sites"]} == {"fused"}  # the default MLP's path
    assert set(outcome["dp_clipping"].values()) == {"fused"}
    assert outcome["site_devices"] == {name: "cpu" for name in outcome["epsilon"]}  # no --gpus-per-site

    server_log = cli_home / "serve.log"
    proc, url = serve(cli_home, server_log)
    try:
        predict = f"{url}/v1/models/{outcome['model']}/predict"
        ok = httpx.post(predict, json={"instances": rows}, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["model"] == outcome["model"] and body["version"] == outcome["version"]
        assert body["predictions"] == [labels[i] for i in expected]
        assert httpx.post(predict, json={"instances": rows}, timeout=30).status_code == 401
        bad = httpx.post(predict, json={"instances": [rows[0][:-1]]},
                         headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert bad.status_code == 422
        assert "30" in bad.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # The access log is on by default: one line per request, path template, status and key id, no body.
    log = server_log.read_text()
    access = [line for line in log.splitlines() if "fedguard.serving.access" in line]
    assert any("POST /v1/models/{name}/predict 200 " in line and "key=" in line for line in access), log[-2000:]
    assert any("POST /v1/models/{name}/predict 401 " in line and "key=-" in line for line in access)
    assert not any(str(rows[0][0]) in line for line in access)

    weights = Path(outcome["artifact"]) / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    refused = run_cli(cli_home, "serve", "--port", "0", timeout=120)
    assert refused.returncode == 5
    assert "weights.safetensors" in refused.stderr
