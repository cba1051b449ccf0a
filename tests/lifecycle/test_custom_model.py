"""Your own nn.Module as a fedguard model: imported by name, pinned by its code hash, checked by Opacus."""

from __future__ import annotations

import hashlib
import itertools
import json
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from coordinator.config import CoordinatorConfig
from federation.protocol import TrainConfig
from lifecycle.architecture import ModelSpec, Standardize, build_model
from lifecycle.bom.document import _code_properties
from lifecycle.bom.model_card import model_card_section
from lifecycle.custom_model import ModelValidationError, describe_custom, import_path
from lifecycle.errors import ConfigurationError
from lifecycle.export import PARITY_TOLERANCE, export_checked
from privacy.dp_sgd import OPACUS_EW, DPPlan, clipping_path, make_private

RESIDUAL = """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, in_features: int, num_classes: int, hidden: int = 8) -> None:
            super().__init__()
            self.inp = nn.Linear(in_features, hidden)
            self.block = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
            self.out = nn.Linear(hidden, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inp(x)
            return self.out(h + self.block(h))

    class Plain(nn.Module):
        def __init__(self, in_features: int, num_classes: int) -> None:
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(in_features, 8), nn.ReLU(), nn.Linear(8, num_classes))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers(x)

    class Normed(nn.Module):
        \"\"\"Two batch norms: Opacus objects to both, and fedguard must say so at once.\"\"\"

        def __init__(self, in_features: int, num_classes: int) -> None:
            super().__init__()
            self.inp = nn.Linear(in_features, 8)
            self.norm1 = nn.BatchNorm1d(8)
            self.mid = nn.Linear(8, 8)
            self.norm2 = nn.BatchNorm1d(8)
            self.out = nn.Linear(8, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.norm2(self.mid(torch.relu(self.norm1(self.inp(x)))))))

    class Wrong(nn.Module):
        def __init__(self, in_features: int, num_classes: int) -> None:
            super().__init__()
            self.layer = nn.Linear(in_features, num_classes + 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)
"""
_counter = itertools.count()


@pytest.fixture
def package(tmp_path: Path) -> str:
    """A fresh importable package (a new name each test: Python caches imported modules by name)."""
    name = f"byo_model_{next(_counter)}_{tmp_path.name.replace('-', '_')}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / name / "model.py").write_text(textwrap.dedent(RESIDUAL))
    import_path(tmp_path)
    return name


def test_a_custom_module_is_described_by_name_and_the_hash_of_its_source(package: str, tmp_path: Path) -> None:
    spec, changes = describe_custom(f"{package}.model:Net", 5, 3, kwargs='{"hidden": 4}')
    source = (tmp_path / package / "model.py").read_bytes()
    assert spec.kind == "custom" and spec.code_sha256 == hashlib.sha256(source).hexdigest() and changes == []
    assert spec.to_dict()["kwargs"] == {"hidden": 4} and spec.to_dict()["module"] == f"{package}.model:Net"
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    model = build_model(spec)
    inner = model[1]
    assert isinstance(model[0], Standardize) and isinstance(inner.inp, nn.Linear) and inner.inp.out_features == 4
    assert model(torch.zeros(2, 5)).shape == (2, 3)
    card = model_card_section(spec, {}, {}, datasets=[])["modelParameters"]
    assert f"{package}.model:Net" in card["modelArchitecture"] and spec.code_sha256[:12] in card["modelArchitecture"]
    assert ("fedguard:model:code-sha256", spec.code_sha256) in _code_properties(spec)


def test_the_spec_travels_to_the_sites_and_a_changed_source_is_refused(package: str, tmp_path: Path) -> None:
    spec, _ = describe_custom(f"{package}.model:Plain", 4, 2)
    record = TrainConfig(server_round=1, total_rounds=1, local_epochs=1, batch_size=8, lr=0.1, dp_epsilon=1.0,
                         dp_delta=1e-5, max_grad_norm=1.0, features=("a", "b", "c", "d"), target="y", spec=spec,
                         seed=0).to_record()
    assert TrainConfig.from_record(record).spec == spec
    path = tmp_path / package / "model.py"
    path.write_text(path.read_text() + "\n# edited at one site\n")
    with pytest.raises(ConfigurationError, match="the same model code"):
        build_model(spec)


def test_every_opacus_objection_is_reported_at_once(package: str) -> None:
    with pytest.raises(ModelValidationError) as raised:
        describe_custom(f"{package}.model:Normed", 4, 2)
    message = str(raised.value)
    assert "2 problem(s)" in message and "norm1" in message and "norm2" in message and "--fix-model" in message
    assert "\n" not in message
    spec, _ = describe_custom(f"{package}.model:Normed", 4, 2, dp_sgd=False)  # without DP-SGD: accepted
    assert not spec.fix


def test_fix_model_lets_opacus_replace_batch_norm_and_says_what_it_changed(package: str) -> None:
    spec, changes = describe_custom(f"{package}.model:Normed", 4, 2, fix=True)
    assert spec.fix and changes == ["norm1: BatchNorm1d → GroupNorm", "norm2: BatchNorm1d → GroupNorm"]
    model = build_model(spec)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())


@pytest.mark.parametrize(("target", "match"), [
    ("Wrong", "return logits of shape"), ("Missing", "not a torch.nn.Module"),
    ("nope:Net", "cannot import 'nope'"), ("bad-name:Net", "name your module"),
])
def test_a_module_that_cannot_be_a_model_is_refused_with_what_to_do(package: str, target: str, match: str) -> None:
    module = target if ":" in target else f"{package}.model:{target}"
    with pytest.raises(ConfigurationError, match=match):
        describe_custom(module, 4, 2)


def test_an_unimportable_module_says_how_to_make_it_importable() -> None:
    with pytest.raises(ConfigurationError, match="--app"):
        describe_custom("no_such_package_here.model:Net", 4, 2)


def test_the_run_config_selects_a_custom_model(package: str) -> None:
    cfg = CoordinatorConfig.from_mapping({"model": f"{package}.model:Net", "model-kwargs": '{"hidden": 6}',
                                          "fix-model": "false"})
    spec = cfg.model_spec(4, 2)
    assert (spec.kind, spec.kwargs_dict, spec.fix) == ("custom", {"hidden": 6}, False)
    assert CoordinatorConfig.from_mapping({"model": "cnn"}).model_spec(64, 10).image_shape == (1, 8, 8)
    with pytest.raises(ConfigurationError, match="mlp, cnn or package.module:ClassName"):
        CoordinatorConfig.from_mapping({"model": "resnet"})


@pytest.mark.parametrize("target", ["Plain", "Net"])
def test_dp_sgd_trains_a_custom_model_on_opacus_per_sample_gradients_and_exports_it(
    package: str, target: str, tmp_path: Path
) -> None:
    """The fused path runs nn.Sequential stacks of linear layers only (the built-in MLP); a user's class is not one.

    Its forward is the user's code, which the fused wrapper cannot replay, so
    DP-SGD falls back to Opacus' ``ew`` per-sample gradients, same σ and
    guarantee, and the BOM reports ``opacus-ew``.
    """
    path = OPACUS_EW
    spec, _ = describe_custom(f"{package}.model:{target}", 4, 2)
    model = build_model(spec)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16, generator=torch.Generator().manual_seed(0))
    plan = DPPlan.for_run(target_epsilon=3.0, delta=1e-5, max_grad_norm=1.0, num_examples=64, batch_size=16, epochs=1)
    module, optimizer, private, _ = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, plan,
                                                 noise_generator=torch.Generator().manual_seed(1))
    assert clipping_path(optimizer) == path
    for features, labels in private:
        if len(labels):
            optimizer.zero_grad()
            torch.autograd.backward(nn.functional.cross_entropy(module(features), labels))
            optimizer.step()
    exported = export_checked(model, 4, tmp_path, x.numpy())
    assert exported.max_abs_diff <= PARITY_TOLERANCE
