"""The serving process imports no torch and none of the training code (it runs the signed ONNX export).

Two checks, both in fresh interpreters (this test process has torch loaded
already): importing the serving app and the CLI, and the real ``fedguard
serve`` process answering a prediction over HTTP, whose loaded modules are
written when it exits and whose memory maps are read while it runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from lifecycle.artifacts import ONNX_NAME
from lifecycle.registry import Registry, VersionRecord
from serving.guards.keys import create_key
from tests.served import wait_served
from tests.serving.conftest import bearer

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "client", "coordinator", "simulations", "opacus", "flwr", "ray", "tenseal")
"""Top-level packages the serving process must not import: PyTorch and the training side."""
INSTANCES = [[0.5, -1.0, 2.0, 0.0], [3.0, 3.0, -3.0, 1.0]]
# Runs `fedguard serve` exactly as the console script does, and writes the loaded modules when it exits
# (uvicorn re-raises SIGTERM after its graceful shutdown; this handler turns it into a normal exit).
SERVE = """
import atexit, json, runpy, signal, sys
dump = sys.argv[1]
atexit.register(lambda: open(dump, "w").write(json.dumps(sorted(sys.modules))))
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
sys.argv = ["fedguard", "serve", "--host", "127.0.0.1", "--port", "0", "--grpc-port", "0"]
runpy.run_module("fedguard.cli", run_name="__main__")
"""


def _env(home: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGUARD_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(FLWR_TELEMETRY_ENABLED="0", FEDGUARD_LOG_LEVEL="INFO")
    if home is not None:
        env["FEDGUARD_HOME"] = str(home)
    return env


def forbidden(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in FORBIDDEN)


def test_importing_the_serving_app_loads_no_torch() -> None:
    code = "import json, sys, fedguard.cli, serving.app, serving.cli; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=ROOT, capture_output=True, text=True,
                            timeout=120, check=True)
    modules = json.loads(result.stdout)
    assert "onnxruntime" in modules and "serving.runtime" in modules
    assert forbidden(modules) == []


@pytest.mark.integration
def test_the_real_serving_process_answers_without_torch(
    registry: Registry, published: VersionRecord, fedguard_home: Path, tmp_path: Path
) -> None:
    key = create_key(registry, "predict", "tests", actor="test")
    dump, log = tmp_path / "modules.json", tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-c", SERVE, str(dump)], env=_env(fedguard_home), cwd=ROOT,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        url = wait_served(process, log, 120)
        response = httpx.post(f"{url}/v1/models/demo/predict", json={"instances": INSTANCES}, headers=bearer(key),
                              timeout=30)
        assert response.status_code == 200, response.text
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert "libonnxruntime" in maps or "onnxruntime_pybind11_state" in maps
        assert "libtorch" not in maps
    finally:
        process.send_signal(signal.SIGTERM)  # uvicorn shuts down gracefully: atexit writes the module list
        process.wait(timeout=60)
    session = ort.InferenceSession(str(published.artifact.model_dir / ONNX_NAME), providers=["CPUExecutionProvider"])
    classes = session.run(None, {"input": np.asarray(INSTANCES, dtype=np.float32)})[0].argmax(axis=1)
    assert response.json()["predictions"] == [("no", "yes")[c] for c in classes]
    assert dump.is_file(), f"exit {process.returncode}, no module list:\n{log.read_text()[-2000:]}"
    modules = json.loads(dump.read_text())
    assert "serving.app" in modules and "onnxruntime" in modules
    assert forbidden(modules) == [], log.read_text()[-2000:]
