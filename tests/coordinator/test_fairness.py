"""Fairness and drift measured at publication, checked against hand computations on tiny arrays."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from coordinator.config import CoordinatorConfig
from coordinator.evaluation import drift_section
from coordinator.fairness import fairness_gaps, fairness_section, groups_of
from coordinator.publication import gate_metrics
from federation.tabular import TabularData
from lifecycle.architecture import DataSchema
from lifecycle.bom.reference import ReferenceStats, omitted_section
from lifecycle.governance.policies import PolicyStore
from lifecycle.registry import Registry


class SignOfFirstFeature(nn.Module):
    """Predicts class 1 exactly when feature 0 is positive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([-x[:, 0], x[:, 0]], dim=1)


def _data(features: list[list[float]], labels: list[int]) -> TabularData:
    return TabularData(np.array(features, dtype=np.float32), np.array(labels, dtype=np.int64), "0" * 64, Path("x"))


def test_binary_gaps_match_a_hand_computation() -> None:
    labels = np.array([1, 1, 0, 0, 1, 0, 0, 0])
    predicted = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    groups = np.array(list("aaaabbbb"))
    # selection rates a 1/4, b 3/4; TPR a 1/2, b 1; FPR a 0, b 2/3
    parity, odds = fairness_gaps(labels, predicted, groups, 2)
    assert parity == pytest.approx(0.5) and odds == pytest.approx(2 / 3)


def test_multiclass_is_one_vs_rest_and_reports_the_worst_class() -> None:
    labels = np.array([0, 1, 2, 0, 0, 1, 2, 2])
    predicted = np.array([0, 1, 2, 0, 1, 1, 2, 0])
    groups = np.array(list("aaaabbbb"))
    # class 0: DP |2/4 - 1/4|, EO max(|1 - 0|, |0 - 1/3|); class 1: 1/4, 1/3; class 2: 0, 1/2
    parity, odds = fairness_gaps(labels, predicted, groups, 3)
    assert parity == pytest.approx(0.25) and odds == pytest.approx(1.0)


def test_groups_by_value_or_split_at_the_median() -> None:
    groups, grouping = groups_of(np.array([0.0, 1.0, 0.0, 1.0]))
    assert list(groups) == ["0", "1", "0", "1"] and grouping == "by value (2 groups)"
    groups, grouping = groups_of(np.arange(20, dtype=np.float64))
    assert list(groups[:10]) == ["<= median"] * 10 and list(groups[10:]) == ["> median"] * 10
    assert grouping == "split at the held-out median 9.5"


def test_the_section_scores_the_model_on_the_held_out_set() -> None:
    ages = [30, 31, 32, 33, 34, 35, 60, 61, 62, 63, 64, 65]
    signs = [1, 1, 1, -1, -1, -1, 1, 1, 1, 1, 1, -1]
    labels = [1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0, 0]
    test = _data([[s, a] for s, a in zip(signs, ages, strict=True)], labels)
    schema = DataSchema(features=("sign", "age"), labels=("no", "yes"))
    # young: selection 1/2, TPR 1, FPR 0; old: selection 5/6, TPR 1, FPR 1/2
    section = fairness_section(SignOfFirstFeature(), test, schema, "age")
    assert section is not None
    assert section == {"attribute": "age", "grouping": "split at the held-out median 47.5",
                       "demographic_parity_difference": pytest.approx(1 / 3),
                       "equalized_odds_difference": pytest.approx(0.5), "examples": 12}
    assert fairness_section(SignOfFirstFeature(), test, schema, "sex") is None
    assert fairness_section(SignOfFirstFeature(), test, schema, None) is None


def test_drift_is_the_largest_psi_against_the_reference() -> None:
    reference = ReferenceStats(features=("f0", "f1"), edges=((0.0,), (0.0, 1.0)), counts=((1, 3), (2, 1, 1)),
                               classes=("no", "yes"), predictions=(2, 2)).to_dict()
    test = _data([[-1, -1], [1, 0.5], [1, 2], [1, 2]], [0, 1, 1, 1])  # f0 (1, 3): no drift; f1 (1, 1, 2)
    # PSI with 0.5 pseudo-counts: p = (2.5, 1.5, 1.5)/5.5, q = (1.5, 1.5, 2.5)/5.5
    assert drift_section(test, reference) == {"statistic": "psi", "max": pytest.approx(2 / 5.5 * math.log(5 / 3)),
                                              "feature": "f1", "against": "reference"}
    assert drift_section(test, omitted_section("no secure aggregation")) is None
    assert drift_section(test, None) is None


def test_publication_measures_what_the_policy_asks(registry: Registry, caplog: pytest.LogCaptureFixture) -> None:
    cfg = CoordinatorConfig.from_mapping({"model-name": "demo"})
    test = _data([[1, 30], [-1, 60]], [1, 0])
    schema = DataSchema(features=("sign", "age"), labels=("no", "yes"))
    assert gate_metrics(registry, cfg, SignOfFirstFeature(), test, schema, None) == {}
    PolicyStore(registry).set("demo", 'sensitive-attribute = "age"\n', actor="t")
    metrics = gate_metrics(registry, cfg, SignOfFirstFeature(), test, schema, None)
    assert metrics["fairness"]["attribute"] == "age" and metrics["fairness"]["grouping"] == "by value (2 groups)"
    PolicyStore(registry).set("demo", 'sensitive-attribute = "sex"\n', actor="t")
    with caplog.at_level(logging.WARNING, logger="fedguard.coordinator"):
        assert gate_metrics(registry, cfg, SignOfFirstFeature(), test, schema, None) == {}
    assert "'sex' is not a feature of the held-out set" in caplog.text
