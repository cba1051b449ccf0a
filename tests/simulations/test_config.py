"""Bad simulation settings are refused before any data is written or Ray starts."""

from __future__ import annotations

from typing import Any

import pytest

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
        ({"watermark": "stamp"}, "trigger-set, none"),
        ({"model_name": "Bad Name"}, "invalid model name"),
        ({"hidden": "32,x"}, "comma-separated"),
        ({"dp_delta": 2.0}, "dp-delta"),
        ({"max_grad_norm": 0.0}, "max-grad-norm"),
        ({"aggregation": "mode"}, "fedavg, median, trimmed-mean, krum"),
        ({"secure_agg": "rot13"}, "secagg\\+, ckks, none"),
        ({"aggregation": "median"}, "secure aggregation hides"),
        ({"sites": 2}, "secagg\\+ needs at least 3 sites"),
        ({"site_epsilon": -1.0}, "site-epsilon"),
    ],
)
def test_bad_settings(change: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        SimulationConfig(**change).validate()


def test_defaults_are_valid() -> None:
    SimulationConfig().validate()


def test_unknown_run_config_key() -> None:
    with pytest.raises(ConfigurationError, match="unknown run-config keys"):
        CoordinatorConfig.from_mapping({"num-rounds": 3})
    with pytest.raises(ConfigurationError, match="is not valid"):
        CoordinatorConfig.from_mapping({"num-server-rounds": "many"})
