"""``fedguard audit privacy``: what it refuses before training anything, and the shadows' inclusion masks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from typer.testing import CliRunner

from fedguard.cli import app
from lifecycle.errors import ConfigurationError
from lifecycle.governance.criteria import CRITERIA, Facts
from lifecycle.packaging import publish_model
from lifecycle.registry import Registry
from simulations.privacy_audit import _simulation_run_config
from simulations.shadows import shadow_masks
from tests.conftest import make_publication


def test_a_deployment_version_is_refused_and_fails_the_gate_unaudited(registry: Registry) -> None:
    record = publish_model(registry, dataclasses.replace(make_publication("deployed"), mode="deployment"))
    gate = CRITERIA["privacy-audit-passed"].measure(Facts(metrics=record.metrics, watermark=record.watermark), True)
    assert not gate.passed and "no privacy audit" in gate.evidence
    with pytest.raises(ConfigurationError, match="only the sites themselves hold"):
        _simulation_run_config("deployed", 1)


@pytest.mark.parametrize(("args", "message"), [
    (["--canaries", "1"], "at least 2 canaries"),
    (["--attack", "shokri"], "choose one of loss, lira, none"),
    (["--attack", "lira", "--shadows", "3"], "even number of shadow federations"),
])
def test_bad_options_are_refused_before_training(registry: Registry, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["audit", "privacy", "demo:1", *args])
    assert isinstance(result.exception, ConfigurationError) and message in str(result.exception)


def test_shadow_masks_put_every_record_in_half_the_shadows() -> None:
    masks = shadow_masks(500, 4, seed=1)
    assert masks.shape == (4, 500) and (masks.sum(axis=0) == 2).all()
    assert np.array_equal(masks, shadow_masks(500, 4, seed=1))
    assert not np.array_equal(masks, shadow_masks(500, 4, seed=2))
    assert abs(masks.mean(axis=1) - 0.5).max() < 0.1
