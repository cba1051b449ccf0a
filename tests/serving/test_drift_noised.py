"""Drift monitoring keeps working on a reference of noised, securely summed counts (issue 12).

The trained test model's reference is replaced by what a federation of five
sites would publish at the default ``reference-epsilon``: the true counts plus
five discrete Gaussian shares sized for SecAgg+'s threshold, clipped at 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lifecycle.bom.reference import ReferenceNoise, ReferenceStats, num_bins, split_counts
from lifecycle.packaging import publish_model
from lifecycle.registry import Registry
from privacy.discrete_gaussian import DistributedPlan, sample
from serving.app import create_app
from serving.guards.keys import CreatedKey
from tests.conftest import make_publication
from tests.serving.test_drift import SETTINGS, _drift, _send
from tests.serving.trained import _trained
from tests.serving.trained import sample as instances


def _noised(reference: dict[str, object]) -> dict[str, object]:
    exact = ReferenceStats.from_dict(reference)  # type: ignore[arg-type]
    plan = DistributedPlan.calibrate(0.5, 1e-5, math.sqrt(len(exact.features)), num_bins(exact.edges), 3, 5)
    rng = np.random.default_rng(7)
    flat = np.concatenate([np.asarray(row) for row in exact.counts])
    noised = flat + sum(sample(plan.sigma, flat.size, rng) for _ in range(5))
    assert np.any(noised != flat)
    noise = ReferenceNoise("secagg+", plan.epsilon(), plan.delta, plan.sigma, math.sqrt(5) * plan.sigma, 3)
    return replace(exact, counts=split_counts(noised.tolist(), exact.edges), noise=noise).to_dict()


@pytest.fixture
def noised_client(registry: Registry) -> Iterator[TestClient]:
    state, reference = _trained()
    pub = make_publication("demo")
    pub.model.load_state_dict(state)
    publish_model(registry, replace(pub, reference=_noised(reference)))
    with TestClient(create_app(registry, SETTINGS)) as client:
        yield client


def test_in_distribution_traffic_stays_quiet_and_a_shift_alerts_on_the_noised_reference(
    noised_client: TestClient, predict_key: CreatedKey, admin_key: CreatedKey,
) -> None:
    _send(noised_client, predict_key, instances(600, seed=10)[0])
    quiet = _drift(noised_client, admin_key)
    assert (quiet["status"], quiet["alert"], quiet["drifted"]) == ("ok", False, [])
    _send(noised_client, predict_key, instances(1000, seed=11, shift=np.array([0.0, 0.0, 0.0, 4.0]))[0])
    body = _drift(noised_client, admin_key)
    assert body["alert"] is True and "f3" in body["drifted"] and "f0" not in body["drifted"]  # type: ignore[operator]
