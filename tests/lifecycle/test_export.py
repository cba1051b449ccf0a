"""The ONNX export: published with every model, checked against PyTorch, recorded in the BOM, signed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from lifecycle.architecture import ModelSpec, Standardize, build_model, set_standardization
from lifecycle.artifacts import ONNX_NAME, file_sha256
from lifecycle.bom import BOM_NAME, read_bom, read_lineage
from lifecycle.bom.lineage import ONNX_PREFIX, properties
from lifecycle.errors import ExportError
from lifecycle.export import BATCH_AXIS, INPUT_NAME, ONNX_OPSET, OUTPUT_NAME, PARITY_TOLERANCE, export_checked
from lifecycle.packaging import publish_model
from lifecycle.registry import Registry, VersionRecord
from tests.conftest import make_publication


class Branching(nn.Module):
    """Data-dependent control flow: the TorchScript tracer records only the branch of its example input.

    Exported from an all-zero example, the ONNX graph always negates; PyTorch
    negates only rows whose sum is not positive. The parity check must see it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(Standardize(4), nn.Linear(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(x)
        return out if bool(x.sum() > 0) else -out


def test_every_publication_carries_a_checked_onnx_export(published: VersionRecord) -> None:
    model_dir = published.artifact.model_dir
    graph = onnx.load(str(model_dir / ONNX_NAME))
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [ONNX_OPSET]
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert (graph.graph.input[0].name, dims[0].dim_param, dims[1].dim_value) == (INPUT_NAME, BATCH_AXIS, 4)
    section = read_lineage(read_bom(model_dir))["serving_format"]
    assert section["format"] == "onnx" and section["opset"] == ONNX_OPSET and section["file"] == ONNX_NAME
    assert section["sha256"] == file_sha256(model_dir / ONNX_NAME)
    assert section["onnxruntime"] == ort.__version__ and section["onnx"] == onnx.__version__
    parity = section["parity"]
    assert 0 <= parity["max_abs_diff"] <= PARITY_TOLERANCE == parity["tolerance"]
    assert (parity["set"], parity["rows"]) == ("probe", 256)  # make_publication brings no held-out set
    bom = json.loads((model_dir / BOM_NAME).read_text())
    readable = properties(bom["metadata"]["component"])
    assert readable[f"{ONNX_PREFIX}opset"] == str(ONNX_OPSET)
    assert float(readable[f"{ONNX_PREFIX}max-abs-diff"]) == parity["max_abs_diff"]
    assert readable[f"{ONNX_PREFIX}onnxruntime"] == ort.__version__
    assert f"ONNX opset {ONNX_OPSET}" in (model_dir / "MODEL_CARD.md").read_text()


def test_the_held_out_set_is_the_parity_set(registry: Registry) -> None:
    held_out = np.random.default_rng(1).normal(0, 3, (50, 4)).astype(np.float32)
    version = publish_model(registry, dataclasses.replace(make_publication(), held_out=held_out))
    parity = read_lineage(read_bom(version.artifact.model_dir))["serving_format"]["parity"]
    assert (parity["set"], parity["rows"]) == ("held-out", 50) and parity["max_abs_diff"] <= PARITY_TOLERANCE


@pytest.mark.parametrize("hidden", [(), (16,), (32, 8)])
def test_onnx_runtime_gives_pytorchs_logits_at_any_batch_size(hidden: tuple[int, ...], tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(in_features=7, num_classes=3, hidden=hidden))
    set_standardization(model, torch.randn(7), torch.rand(7) + 0.5)
    held_out = np.random.default_rng(0).normal(0, 5, (300, 7)).astype(np.float32)
    exported = export_checked(model, 7, tmp_path, held_out)
    assert exported.max_abs_diff <= PARITY_TOLERANCE
    session = ort.InferenceSession(str(tmp_path / ONNX_NAME), providers=["CPUExecutionProvider"])
    for rows in (1, 13, 300):
        with torch.no_grad():
            expected = model(torch.from_numpy(held_out[:rows])).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: held_out[:rows]})[0]
        assert got.shape == (rows, 3)
        np.testing.assert_allclose(got, expected, rtol=0, atol=PARITY_TOLERANCE)


def test_a_model_with_large_logits_is_checked_to_float32_digits_not_to_an_absolute_bound(tmp_path: Path) -> None:
    """Site-level DP trained models with logits in the hundreds: float32 rounding alone then exceeds 1e-5."""
    from lifecycle.export import PARITY_RELATIVE_TOLERANCE, tolerance_for

    torch.manual_seed(0)
    model = build_model(ModelSpec(in_features=30, num_classes=2, hidden=(32,)))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(40.0)
    held_out = np.random.default_rng(0).normal(0, 3, (114, 30)).astype(np.float32)
    exported = export_checked(model, 30, tmp_path, held_out)
    assert exported.logit_scale > 1000 and exported.tolerance == PARITY_RELATIVE_TOLERANCE * exported.logit_scale
    assert exported.max_abs_diff <= exported.tolerance
    assert tolerance_for(0.5) == PARITY_TOLERANCE and tolerance_for(1e4) == pytest.approx(1e-2)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the very defect this test publishes
def test_an_export_that_is_not_the_model_refuses_the_publication(registry: Registry) -> None:
    pub = make_publication()
    held_out = np.abs(np.random.default_rng(2).normal(0, 1, (20, 4))).astype(np.float32)  # positive sums
    broken = dataclasses.replace(pub, model=Branching(), held_out=held_out)
    with pytest.raises(ExportError, match=r"differ from PyTorch's by .* on the held-out set .*publication refused") \
            as caught:
        publish_model(registry, broken)
    assert caught.value.exit_code == 5
    assert registry.latest_versions() == []
    assert not any(p.is_dir() for p in (registry.store.root / ".staging").iterdir())


def test_a_parity_set_of_the_wrong_width_is_refused(registry: Registry) -> None:
    pub = dataclasses.replace(make_publication(), held_out=np.zeros((5, 3), dtype=np.float32))
    with pytest.raises(ExportError, match=r"shape \(5, 3\); expected rows of 4 features"):
        publish_model(registry, pub)


def test_onnx_runtime_writes_nothing_outside_the_model(tmp_path: Path) -> None:
    """ONNX Runtime 1.29 and later embed Microsoft's 1DS telemetry client, which writes ``.ses`` and
    ``mat-debug-<pid>.log`` into TMPDIR at import: the pinned runtime must not (nothing about a site's or a
    consumer's use of a model is written for, or sent to, a third party)."""
    import os
    import subprocess
    import sys

    model = build_model(ModelSpec(in_features=4, num_classes=2, hidden=(8,)))
    export_checked(model, 4, tmp_path)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    probe = ("import sys, numpy as np, onnxruntime as ort; "
             "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider']); "
             "s.run(None, {'input': np.zeros((1, 4), np.float32)})")
    subprocess.run([sys.executable, "-c", probe, str(tmp_path / ONNX_NAME)], check=True, timeout=120,
                   env={**os.environ, "TMPDIR": str(scratch)})
    assert sorted(p.name for p in scratch.iterdir()) == []
