"""Where a site trains: asked for explicitly, refused clearly when the GPU is not there."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from client.cli import site_node_config
from client.config import TrainConfig
from client.device import check_device, describe, training_device
from client.training import plan_for, train_locally
from federation.tabular import TabularData
from lifecycle.architecture import ModelSpec, build_model
from lifecycle.errors import ConfigurationError

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a CUDA GPU")


def test_unknown_device_names_the_choices() -> None:
    with pytest.raises(ConfigurationError, match="device 'gpu0': choose one of cpu, cuda, auto"):
        check_device("gpu0")
    with pytest.raises(ConfigurationError, match="choose one of cpu, cuda, auto"):
        site_node_config("s", Path("d.csv"), Path("s.toml"), Path("a"), Path("l"), None, "gpu0")


def test_cpu_is_the_cpu() -> None:
    assert training_device("cpu") == torch.device("cpu")
    assert describe(torch.device("cpu")) == "cpu"


@NO_GPU
def test_without_a_gpu_auto_falls_back_and_cuda_refuses() -> None:
    assert training_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigurationError, match="asked to train on a GPU, but PyTorch sees none") as err:
        training_device("cuda")
    assert "CUDA_VISIBLE_DEVICES" in str(err.value) and "device='cpu'" in str(err.value)


def test_round_config_carries_the_run_device_and_defaults_to_cpu() -> None:
    record = {"server-round": 1, "total-rounds": 1, "local-epochs": 1, "batch-size": 8, "lr": 0.1,
              "dp-epsilon": 0.0, "dp-delta": 1e-5, "max-grad-norm": 1.0, "features": ["a"], "target": "y",
              "num-classes": 2, "hidden": [4], "seed": 0}
    assert TrainConfig.from_record(ConfigRecord(record)).device == "cpu"  # an older coordinator sends none
    assert TrainConfig.from_record(ConfigRecord({**record, "device": "auto"})).device == "auto"


def test_site_node_config_sets_the_device_only_when_given() -> None:
    args = ("s", Path("d.csv"), Path("s.toml"), Path("a"), Path("l"), None)
    assert "device" not in site_node_config(*args)
    assert site_node_config(*args, "cuda")["device"] == "cuda"


def test_training_on_a_device_hands_back_a_cpu_model() -> None:
    """Weights serialize from the CPU whatever the device, and DP-SGD still moves them."""
    rng = np.random.default_rng(0)
    data = TabularData(rng.normal(size=(32, 3)).astype(np.float32), (np.arange(32) % 2).astype(np.int64), "m",
                       Path("x"))
    cfg = TrainConfig(server_round=1, total_rounds=1, local_epochs=1, batch_size=8, lr=0.1, dp_epsilon=3.0,
                      dp_delta=1e-5, max_grad_norm=1.0, features=tuple("abc"), target="y",
                      spec=ModelSpec(3, 2, (4,)), seed=0)
    model = build_model(cfg.spec)
    before = [p.detach().clone() for p in model.parameters()]
    device = training_device("auto")  # the GPU where one is, so a GPU machine runs the same test on it
    result = train_locally(model, data, cfg, plan_for(cfg, data), generator=torch.Generator().manual_seed(0),
                           device=device)
    assert math.isfinite(result.train_loss)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
