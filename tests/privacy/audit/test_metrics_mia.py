"""ROC metrics against scikit-learn, and the loss-threshold and LiRA scores on simulated shadow models."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from lifecycle.errors import ConfigurationError
from privacy.audit.metrics import auc, report, roc, tpr_at_fpr
from privacy.audit.mia import lira_offline, lira_online, logit_confidence, loss_scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_roc_agree_with_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    members = rng.random(500) < 0.4
    scores = np.round(members * 0.5 + rng.normal(0, 1, 500), 1)  # rounded: ties included
    assert auc(scores, members) == pytest.approx(roc_auc_score(members, scores), abs=1e-12)
    fpr, tpr = roc(scores, members)
    ref_fpr, ref_tpr, _ = roc_curve(members, scores, drop_intermediate=False)
    assert np.allclose(fpr, ref_fpr) and np.allclose(tpr, ref_tpr)


def test_tpr_at_low_fpr() -> None:
    members = np.array([True] * 10 + [False] * 1000)
    scores = np.r_[np.full(10, 5.0), np.linspace(-1, 1, 1000)]
    assert tpr_at_fpr(scores, members, 0.001) == 1.0
    assert tpr_at_fpr(-scores, members, 0.01) == 0.0
    r = report("loss", scores, members)
    assert (r.members, r.non_members, r.auc) == (10, 1000, 1.0)


def test_one_class_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        auc([1.0, 2.0], [True, True])


def _shadows(seed: int, examples: int = 300, shadows: int = 16, gap: float = 1.0):  # type: ignore[no-untyped-def]
    """φ = difficulty + gap·IN + noise: per-example difficulty is what LiRA's per-example fit removes."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, 3, examples)
    inside = rng.random((shadows, examples)) < 0.5
    phi = difficulty + gap * inside + rng.normal(0, 0.5, (shadows, examples))
    target_in = rng.random(examples) < 0.5
    target = difficulty + gap * target_in + rng.normal(0, 0.5, examples)
    return target, phi, inside, target_in


def test_lira_beats_the_global_threshold_when_examples_differ() -> None:
    target, phi, inside, members = _shadows(5)
    global_auc = auc(target, members)  # a global threshold on φ is the loss attack in disguise
    assert auc(lira_online(target, phi, inside), members) > global_auc + 0.15
    assert auc(lira_offline(target, phi, inside), members) > global_auc + 0.1


def test_lira_on_an_independent_target_is_chance() -> None:
    target, phi, inside, _ = _shadows(6, gap=0.0)
    members = np.random.default_rng(99).random(target.size) < 0.5
    assert abs(auc(lira_online(target, phi, inside), members) - 0.5) < 0.1


def test_lira_needs_shadows_on_both_sides() -> None:
    target, phi, inside, _ = _shadows(7, shadows=2)
    inside[:, 0] = True
    with pytest.raises(ConfigurationError, match="more shadow models"):
        lira_online(target, phi, inside)


def test_scores_orientation() -> None:
    assert loss_scores([0.1, 2.0])[0] > loss_scores([0.1, 2.0])[1]
    assert logit_confidence([0.5])[0] == pytest.approx(0.0)
    assert np.isfinite(logit_confidence([0.0, 1.0])).all()
