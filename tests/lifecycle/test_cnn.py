"""The built-in CNN (``ModelSpec(kind="cnn")``): description, round trips, ONNX parity, DP-SGD, watermark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from sklearn.datasets import load_digits  # type: ignore[import-untyped, unused-ignore]
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from federation.protocol import MODEL_SPEC, ProtocolError, TrainConfig
from lifecycle.architecture import ModelSpec, build_model, reference_standardization, set_standardization
from lifecycle.artifacts import ONNX_NAME
from lifecycle.bom.model_card import model_card_section
from lifecycle.description import parse_image_shape
from lifecycle.errors import ConfigurationError
from lifecycle.export import INPUT_NAME, OUTPUT_NAME, PARITY_TOLERANCE, export_checked
from privacy.dp_sgd import OPACUS_EW, DPPlan, clipping_path, make_private
from simulations.threads import single_torch_thread
from watermark import create_scheme
from watermark.schemes.trigger_set import IMAGE_PATTERN, TriggerSetScheme

SPEC = ModelSpec.cnn(64, 10)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    return torch.tensor(data.data, dtype=torch.float32), torch.tensor(data.target, dtype=torch.int64)


@pytest.fixture(scope="module")
def trained(digits: tuple[torch.Tensor, torch.Tensor]) -> nn.Sequential:
    """A CNN trained centrally on digits for a few full-batch Adam steps (one torch thread)."""
    x, y = digits
    with single_torch_thread():
        torch.manual_seed(0)
        model = build_model(SPEC)
        set_standardization(model, *reference_standardization(x))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(60):
            optimizer.zero_grad()
            torch.autograd.backward(nn.functional.cross_entropy(model(x), y))
            optimizer.step()
    return model.eval()


def test_the_digits_image_is_the_feature_row_and_the_spec_round_trips() -> None:
    assert SPEC.image_shape == (1, 8, 8) and SPEC.hidden == (32,)  # one block of 32 channels
    assert ModelSpec.from_dict(json.loads(json.dumps(SPEC.to_dict()))) == SPEC
    assert parse_image_shape("1,8,8", 64) == (1, 8, 8) == parse_image_shape("", 64)
    model = build_model(SPEC)
    assert model(torch.zeros(3, 64)).shape == (3, 10)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    card = model_card_section(SPEC, {}, {}, datasets=[])["modelParameters"]
    assert card["architectureFamily"] == "cnn" and card["modelArchitecture"] == "cnn 1×8×8 conv 32 → 10"
    two = ModelSpec.cnn(64, 10, channels=(8, 16))
    assert [type(m).__name__ for m in build_model(two)][-3:] == ["MaxPool2d", "Flatten", "Linear"]
    assert build_model(two)[-1].in_features == 16 * 2 * 2


def test_an_mlp_is_described_exactly_as_before() -> None:
    """Published MLP BOMs keep their bytes: no new keys for the kind that existed."""
    assert ModelSpec(30, 2).to_dict() == {"in_features": 30, "num_classes": 2, "hidden": [32], "kind": "mlp"}


@pytest.mark.parametrize("bad", [
    {"image_shape": (1, 7, 8)},  # 56 pixels, 64 features
    {"image_shape": (1, 8)},
    {"hidden": ()},  # no convolution block
    {"hidden": (4, 4, 4, 4)},  # 8×8 halves only three times
])
def test_an_image_that_does_not_hold_the_features_is_refused(bad: dict[str, tuple[int, ...]]) -> None:
    values = {"image_shape": (1, 8, 8), "hidden": (16,), **bad}
    with pytest.raises(ConfigurationError):
        ModelSpec(64, 10, values["hidden"], "cnn", values["image_shape"])
    with pytest.raises(ConfigurationError, match="square"):
        ModelSpec.cnn(30, 2)


def test_the_spec_travels_to_the_sites_in_the_round_config() -> None:
    config = TrainConfig(server_round=1, total_rounds=1, local_epochs=1, batch_size=8, lr=0.1, dp_epsilon=0.0,
                         dp_delta=1e-5, max_grad_norm=1.0, features=tuple(f"p{i}" for i in range(64)),
                         target="label", spec=SPEC, seed=0)
    record = config.to_record()
    assert MODEL_SPEC in record
    assert TrainConfig.from_record(record).spec == SPEC
    with pytest.raises(ProtocolError, match="features and classes"):
        TrainConfig.from_record({**dict(record), MODEL_SPEC: json.dumps(ModelSpec(63, 10).to_dict())})


def test_onnx_export_of_the_cnn_matches_pytorch_at_any_batch(trained: nn.Sequential, tmp_path: Path,
                                                             digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    held_out = digits[0][:300].numpy()
    exported = export_checked(trained, 64, tmp_path, held_out)
    assert exported.max_abs_diff <= PARITY_TOLERANCE and exported.parity_set == "held-out"
    session = ort.InferenceSession(str(tmp_path / ONNX_NAME), providers=["CPUExecutionProvider"])
    for rows in (1, 7, 300):
        with torch.no_grad():
            expected = trained(torch.from_numpy(held_out[:rows])).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: held_out[:rows]})[0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=PARITY_TOLERANCE)


def test_dp_sgd_trains_the_cnn_on_opacus_per_sample_gradients(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Convolutions are outside the fused path (linear layers only): Opacus' ew mode is the fallback, same σ."""
    x, y = digits[0][:256], digits[1][:256]
    model = build_model(SPEC)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, generator=torch.Generator().manual_seed(0))
    plan = DPPlan.for_run(target_epsilon=3.0, delta=1e-5, max_grad_norm=1.0, num_examples=256, batch_size=64,
                          epochs=1)
    before = [p.detach().clone() for p in model.parameters()]
    with single_torch_thread():
        module, optimizer, private_loader, _ = make_private(
            model, torch.optim.SGD(model.parameters(), lr=0.1), loader, plan,
            noise_generator=torch.Generator().manual_seed(1))
        assert clipping_path(optimizer) == OPACUS_EW
        for features, labels in private_loader:
            if len(labels):
                optimizer.zero_grad()
                torch.autograd.backward(nn.functional.cross_entropy(module(features), labels))
                optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_the_trigger_set_watermark_embeds_image_patterns_in_the_cnn_and_verifies(
    trained: nn.Sequential, digits: tuple[torch.Tensor, torch.Tensor]
) -> None:
    scheme = create_scheme("trigger-set", anchor_batch=64)
    assert isinstance(scheme, TriggerSetScheme)
    secret = scheme.generate(trained, SPEC, generator=torch.Generator().manual_seed(7))
    assert secret.params["pattern"] == IMAGE_PATTERN and secret.params["image_shape"] == [1, 8, 8]
    assert not scheme.measure(trained, secret).verified  # never saw the patterns: chance agreement
    with single_torch_thread():
        report = scheme.embed(trained, secret, generator=torch.Generator().manual_seed(8))
    assert scheme.verify(report.model, secret).verified
    x, y = digits
    with torch.no_grad():
        before = float((trained(x).argmax(1) == y).float().mean())
        after = float((report.model(x).argmax(1) == y).float().mean())
    assert before > 0.9 and before - after <= 0.03


def test_a_deployment_job_selects_the_cnn_and_flower_knows_the_keys(tmp_path: Path) -> None:
    """``fedguard run launch job.toml``: the job's model keys validate, and the app's run config declares them.

    Flower overrides only the keys that ``[tool.flwr.app.config]`` declares, so
    every model key must be there for a job to reach the ServerApp.
    """
    import tomllib

    from coordinator.runs.job import Job

    job = tmp_path / "job.toml"
    job.write_text('model = "cnn"\nimage-shape = "1,8,8"\nhidden = "16"\nmodel-name = "digits-cnn"\n')
    loaded = Job.load(job)
    assert 'model="cnn"' in loaded.run_config_arg().replace(" = ", "=")
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    declared = pyproject["tool"]["flwr"]["app"]["config"]
    assert {"model", "model-kwargs", "image-shape", "fix-model"} <= set(declared)
    assert declared["model"] == "mlp" and declared["fix-model"] is False
