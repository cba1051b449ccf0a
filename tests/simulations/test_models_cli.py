"""fedguard simulate refuses a model it cannot train before any engine starts, naming every problem at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

from simulations.cli import app_model_config
from tests.e2e.conftest import run_cli

NORMED = """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, in_features: int, num_classes: int) -> None:
            super().__init__()
            self.inp, self.norm1 = nn.Linear(in_features, 8), nn.BatchNorm1d(8)
            self.mid, self.norm2 = nn.Linear(8, 8), nn.BatchNorm1d(8)
            self.out = nn.Linear(8, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.norm2(self.mid(torch.relu(self.norm1(self.inp(x)))))))
"""


def test_every_opacus_problem_is_one_error_and_exit_2_before_training(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "normed_app").mkdir(parents=True)
    (app / "normed_app" / "__init__.py").write_text("")
    (app / "normed_app" / "model.py").write_text(textwrap.dedent(NORMED))
    (app / "pyproject.toml").write_text('[tool.flwr.app.config]\nmodel = "normed_app.model:Net"\nrounds = 3\n')
    assert app_model_config(str(app)) == {"model": "normed_app.model:Net"}
    result = run_cli(tmp_path / "home", "simulate", "--app", str(app), "--sites", "3", "--rounds", "1")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    error = [line for line in output.splitlines() if "cannot train under DP-SGD" in line]
    assert len(error) == 1 and "2 problem(s)" in error[0] and "--fix-model" in error[0], output[-2000:]
    assert "norm1 (BatchNorm1d)" in error[0] and "norm2 (BatchNorm1d)" in error[0]
    assert "starting Flower simulation" not in output


def test_a_cnn_on_features_that_are_no_image_is_refused_before_training(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "home", "simulate", "--model", "cnn", "--sites", "3", "--rounds", "1")
    assert result.returncode == 2 and "image-shape" in result.stdout + result.stderr
