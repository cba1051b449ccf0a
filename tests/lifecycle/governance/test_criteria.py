"""Each criterion measured on facts: pass, fail, and "cannot be measured" (which fails, saying why)."""

from __future__ import annotations

from typing import Any

import pytest

from lifecycle.governance.criteria import CRITERIA, Facts, measure
from lifecycle.registry import SiteRecord

SITES = (SiteRecord("north", 10, "0" * 64, 1.0, 1e-5, 3), SiteRecord("south", 12, "1" * 64, 2.5, 1e-5, 3))
TRAINING = {"sites": [{"site": "north", "site_dp": {"epsilon": 4.0}}, {"site": "south", "site_dp": {"epsilon": 7.5}}]}
MARK = {"scheme": "trigger-set", "verified": True, "trigger_accuracy": 1.0, "p_value": 1e-9, "commitment": "ab" * 32}
METRICS = {
    "accuracy": 0.93, "test_examples": 114,
    "fairness": {"attribute": "age", "grouping": "split at the held-out median 50", "examples": 114,
                 "demographic_parity_difference": 0.04, "equalized_odds_difference": 0.12},
    "drift": {"statistic": "psi", "max": 0.08, "feature": "bmi", "against": "reference"},
    "privacy_audit": {"passed": True, "epsilon_lower_bound": 0.7, "epsilon": 3.0},
}
GOOD = Facts(metrics=METRICS, watermark=MARK, sites=SITES, signed_epsilon={"north": 1.0, "south": 2.5},
             training=TRAINING, withdrawals=[], signature=(True, "OpenSSF model signature by abc"),
             sensitive_attribute="age")


def _one(facts: Facts, key: str, threshold: Any) -> Any:
    (result,) = measure(facts, ((key, threshold),))
    assert result.criterion == key and result.threshold == threshold
    return result


@pytest.mark.parametrize(("key", "passing", "failing", "measured", "evidence"), [
    ("min-accuracy", 0.9, 0.95, 0.93, "114 held-out records"),
    ("max-record-epsilon", 3.0, 2.0, 2.5, "worst site 'south' of 2"),
    ("max-site-epsilon", 8.0, 5.0, 7.5, "worst site 'south' of 2"),
    ("max-demographic-parity-difference", 0.05, 0.01, 0.04, "groups of 'age'"),
    ("max-equalized-odds-difference", 0.15, 0.1, 0.12, "split at the held-out median"),
    ("max-drift", 0.1, 0.05, 0.08, "feature 'bmi'"),
])
def test_a_threshold_criterion_passes_and_fails_on_its_measured_value(
        key: str, passing: float, failing: float, measured: float, evidence: str) -> None:
    ok, bad = _one(GOOD, key, passing), _one(GOOD, key, failing)
    assert (ok.passed, bad.passed, ok.measured, bad.measured) == (True, False, measured, measured)
    assert evidence in ok.evidence


@pytest.mark.parametrize(("key", "facts", "evidence"), [
    ("signature-verified", Facts({}, {}, signature=(False, "Hash mismatch for 'model.safetensors'")),
     "Hash mismatch"),
    ("watermark-verified", Facts({}, {**MARK, "verified": False}), "NOT detected"),
    ("watermark-verified", Facts({}, {"scheme": "none"}), "without a watermark"),
    ("consent-clean", Facts({}, {}, withdrawals=["#3 (site north)"]), "#3 (site north)"),
    ("privacy-audit-passed", Facts({"privacy_audit": {"passed": False, "epsilon_lower_bound": 5.1, "epsilon": 3}},
                                   {}), "lower bound 5.1"),
])
def test_a_required_property_fails_with_its_evidence(key: str, facts: Facts, evidence: str) -> None:
    assert _one(GOOD, key, True).passed
    result = _one(facts, key, True)
    assert not result.passed and result.measured is False and evidence in result.evidence


@pytest.mark.parametrize(("key", "threshold", "facts", "evidence"), [
    ("min-accuracy", 0.9, Facts({"accuracy": "high"}, {}), "no test accuracy recorded"),
    ("max-record-epsilon", 3.0, Facts({}, {}, sites=(SiteRecord("east", 5, "", None, None, 1),)),
     "site(s) east have no ε"),
    ("max-record-epsilon", 3.0, Facts({}, {}), "no site is recorded"),
    ("max-record-epsilon", 3.0, Facts({}, {}, sites=SITES, signed_epsilon={"north": 1.0, "south": 0.1}),
     "the registry says ε=2.5 for site 'south' but the signed ML-BOM says 0.1"),
    ("max-site-epsilon", 8.0, Facts({}, {}, training={"sites": [{"site": "north", "site_dp": {}}]}),
     "no site-level DP"),
    ("max-site-epsilon", 8.0, Facts({}, {}, problems={"bom": "no bom.json"}), "could not be read (no bom.json)"),
    ("max-demographic-parity-difference", 0.1, Facts({}, {}, sensitive_attribute="age"),
     "no fairness measurement recorded"),
    ("max-equalized-odds-difference", 0.1, Facts(METRICS, {}, sensitive_attribute="sex"),
     "measured on 'age', but the policy's sensitive attribute is 'sex': retrain or re-publish"),
    ("max-drift", 0.2, Facts({"accuracy": 1.0}, {}), "published without reference statistics"),
    ("signature-verified", True, Facts({}, {}), "not signed yet"),
    ("consent-clean", True, Facts({}, {}), "could not be read"),
    ("privacy-audit-passed", True, Facts({"accuracy": 1.0}, {}), "no privacy audit recorded for this version"),
    ("watermark-verified", True, Facts({}, {"scheme": "trigger-set"}), "no verification"),
])
def test_what_cannot_be_measured_fails_and_says_why(key: str, threshold: Any, facts: Facts, evidence: str) -> None:
    result = _one(facts, key, threshold)
    assert not result.passed and result.measured is None
    assert evidence in result.evidence, result.evidence


def test_every_registered_criterion_is_covered_above() -> None:
    assert set(CRITERIA) == {"min-accuracy", "max-record-epsilon", "max-site-epsilon", "signature-verified",
                             "watermark-verified", "max-demographic-parity-difference",
                             "max-equalized-odds-difference", "max-drift", "consent-clean", "privacy-audit-passed"}
