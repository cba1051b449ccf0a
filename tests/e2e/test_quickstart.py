"""The README's flow end to end: simulate → verify → key → serve → predict over HTTP."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import torch

from lifecycle.artifacts import load_model
from lifecycle.bom import read_bom, read_lineage
from tests.e2e.conftest import FEDGUARD, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _test_rows(run_dir: Path) -> list[list[float]]:
    with (run_dir / "data" / "test.csv").open() as handle:
        rows = list(csv.reader(handle))[1:]
    return [[float(v) for v in row[:-1]] for row in rows[:20]]


def _serve(home: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGUARD_")}
    env["FEDGUARD_HOME"] = str(home)
    return subprocess.Popen(
        [FEDGUARD, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_healthy(url: str, proc: subprocess.Popen[str], deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.3)
    raise AssertionError("server did not become healthy in time")


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
    assert {site["dp"]["clipping"] for site in bom["training"]["sites"]} == {"fused"}  # the default MLP's path
    assert set(outcome["dp_clipping"].values()) == {"fused"}
    assert outcome["site_devices"] == {name: "cpu" for name in outcome["epsilon"]}  # no --gpus-per-site

    port = _free_port()
    proc = _serve(cli_home, port)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
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
    log = proc.stdout.read() if proc.stdout else ""
    access = [line for line in log.splitlines() if "fedguard.serving.access" in line]
    assert any("POST /v1/models/{name}/predict 200 " in line and "key=" in line for line in access), log[-2000:]
    assert any("POST /v1/models/{name}/predict 401 " in line and "key=-" in line for line in access)
    assert not any(str(rows[0][0]) in line for line in access)

    weights = Path(outcome["artifact"]) / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    refused = run_cli(cli_home, "serve", "--port", str(_free_port()), timeout=120)
    assert refused.returncode == 5
    assert "weights.safetensors" in refused.stderr
