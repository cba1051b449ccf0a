"""The CNN on digits images over the real deployment runtime: the same ``fedguard run launch`` as the MLP.

Three site agents hold their share of scikit-learn's digits (64 pixel
columns, the site schema of any table) and the job names the model
(``model = "cnn"``, ``image-shape = "1,8,8"``): the coordinator sends the
spec in the round config, each site builds the CNN from it and trains it with
DP-SGD (Opacus' per-sample gradients: the fused path replays only linear
stacks), SecAgg+ aggregates, the coordinator watermarks it with image-pattern
triggers, exports it to ONNX, signs and registers it. A federation of its own
(``tests/integration/deployment.py``), not the MLP module's: its sites hold
other data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifecycle.artifacts import ONNX_NAME
from lifecycle.bom import read_bom
from lifecycle.registry import Registry
from lifecycle.registry.deployments import verify_version
from simulations.federation import SimulationConfig, prepare_data
from tests.integration.deployment import Federation
from tests.integration.test_deployment import _fedguard, _until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
SITES = 3


@pytest.fixture
def digits_federation(tmp_path: Path) -> Iterator[tuple[Federation, Path]]:
    data = tmp_path / "data"
    data.mkdir()
    prepare_data(SimulationConfig(dataset="digits", sites=SITES, rounds=1, seed=42, local_epochs=1, model="cnn",
                                  image_shape="1,8,8"), data)
    with Federation(tmp_path, SITES, fast=True).running(data) as fed:
        yield fed, data


def test_a_cnn_on_digits_images_trains_watermarked_and_signed_in_a_deployment(
    digits_federation: tuple[Federation, Path], tmp_path: Path
) -> None:
    fed, data = digits_federation
    job = tmp_path / "job.toml"
    values = {"num-server-rounds": 2, "num-sites": SITES, "local-epochs": 1, "data-dir": str(data),
              "round-timeout": 300.0, "model-name": "digits-cnn", "model": "cnn", "image-shape": "1,8,8"}
    job.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    launched = _fedguard(fed, "launch", str(job))
    seen = _until(fed, launched, lambda e: e["event"] == "done", timeout=600)
    assert [e["round"] for e in seen if e["event"] == "round"] == [1, 2]

    registry = Registry.open(fed.settings)
    version = registry.get_version("digits-cnn")
    assert {s.site for s in version.sites} == {f"site-{i}" for i in range(SITES)}
    assert all(s.epsilon is not None and 0 < s.epsilon <= 3.0 * 1.001 for s in version.sites)  # default DP
    model_dir = version.artifact.model_dir
    bom = json.dumps(read_bom(model_dir))
    assert '"cnn"' in bom and (model_dir / ONNX_NAME).is_file()
    verify_version(registry, version.name, version.version)  # the signature covers the ONNX export too
    outcome = json.loads((fed.home / "runs" / launched.run_id / "outcome.json").read_text())
    assert outcome["secure_aggregation"] == "secagg+"
    assert outcome["watermark"]["verified"] is True  # the image-pattern trigger set, measured at publication
    assert outcome["accuracy"] > 0.3, outcome  # chance is 0.10; measured 0.617 (2 rounds, 3 sites, ε=3)
