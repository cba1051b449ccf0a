"""Bad simulation settings are refused before any data is written or Ray starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from coordinator.config import CoordinatorConfig
from lifecycle.errors import ConfigurationError
from simulations.federation import SimulationConfig


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"sites": 0}, "--sites 0"),
        ({"rounds": 0}, "--rounds 0"),
        ({"dp_epsilon": -1.0}, "--dp-epsilon"),
        ({"alpha": 0.0}, "--alpha"),
        ({"dataset": "mnist"}, "breast-cancer, digits, wine"),
        ({"watermark": "stamp"}, "trigger-set, weight-key, none"),
        ({"model_name": "Bad Name"}, "invalid model name"),
        ({"hidden": "32,x"}, "comma-separated"),
        ({"hidden": "32,0"}, "must be positive"),
        ({"hidden": "none"}, "cannot carry the trigger-set watermark"),
        ({"dp_delta": 2.0}, "dp-delta"),
        ({"max_grad_norm": 0.0}, "max-grad-norm"),
        ({"aggregation": "mode"}, "fedavg, median, trimmed-mean, krum"),
        ({"secure_agg": "rot13"}, "secagg\\+, ckks, none"),
        ({"aggregation": "median"}, "secure aggregation hides"),
        ({"sites": 2}, "secagg\\+ needs at least 3 sites"),
        ({"site_epsilon": -1.0}, "site-epsilon"),
        ({"dp_epsilon": float("inf")}, "--dp-epsilon inf: .*0 to train without record-level DP"),
        ({"dp_epsilon": float("nan")}, "--dp-epsilon nan"),
        ({"site_epsilon": float("inf")}, "--site-epsilon inf: .*0 for no site-level DP"),
        ({"cpus_per_site": 0.0}, "--cpus-per-site 0.0"),
        ({"gpus_per_site": -0.5}, "share of one GPU"),
        ({"gpus_per_site": 1.5}, "share of one GPU"),
    ],
)
def test_bad_settings(change: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        SimulationConfig(**change).validate()


def test_defaults_are_valid() -> None:
    SimulationConfig().validate()


@pytest.mark.parametrize(("hidden", "sizes"), [("none", ()), ("", ()), ("Linear", ()), ("64, 32", (64, 32))])
def test_hidden_none_is_a_linear_model(hidden: str, sizes: tuple[int, ...]) -> None:
    """``--hidden none --watermark none``: logistic regression, the model that learns under ε=1 on small sites."""
    from lifecycle.architecture import ModelSpec, build_model

    SimulationConfig(hidden=hidden, watermark="none").validate()
    config = CoordinatorConfig.from_mapping({"hidden": hidden, "watermark": "none"})
    assert config.hidden_sizes == sizes
    model = build_model(ModelSpec(30, 2, config.hidden_sizes))
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear) == len(sizes) + 1
    assert sum(p.numel() for p in model.parameters()) == (62 if not sizes else 30 * 64 + 64 + 64 * 32 + 32 + 66)


@pytest.mark.parametrize("key", ["dp-epsilon", "site-epsilon"])
@pytest.mark.parametrize("value", [float("inf"), float("nan"), "inf"])
def test_an_infinite_epsilon_in_the_run_config_is_refused(key: str, value: object) -> None:
    """``flwr run --run-config 'dp-epsilon=inf'`` would pass ε=∞ to the sites: no noise, no guarantee."""
    with pytest.raises(ConfigurationError, match=f"{key} must be a finite"):
        CoordinatorConfig.from_mapping({key: value})


def test_unknown_run_config_key() -> None:
    with pytest.raises(ConfigurationError, match="unknown run-config keys"):
        CoordinatorConfig.from_mapping({"num-rounds": 3})
    with pytest.raises(ConfigurationError, match="is not valid"):
        CoordinatorConfig.from_mapping({"num-server-rounds": "many"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a CUDA GPU")
def test_gpu_share_without_a_gpu_is_refused_before_ray_starts() -> None:
    """Ray would wait forever for a GPU that is not there; the run says so at once instead."""
    with pytest.raises(ConfigurationError, match="PyTorch sees 0 CUDA GPU"):
        SimulationConfig(gpus_per_site=0.25).validate()


def test_sites_train_where_the_run_placed_them() -> None:
    """A GPU share asks the sites for CUDA; none keeps them on the CPU (Ray leaves GPUs visible then)."""
    assert SimulationConfig().coordinator_overrides(Path("d"), Path("o"))["site-device"] == "cpu"
    gpu = SimulationConfig(gpus_per_site=0.25)
    assert gpu.coordinator_overrides(Path("d"), Path("o"))["site-device"] == "cuda"
    with pytest.raises(ConfigurationError, match="site-device 'tpu': choose one of cpu, cuda, auto"):
        CoordinatorConfig.from_mapping({"site-device": "tpu"})
