"""Membership-inference scores from per-example losses or confidences (higher score = more likely a member).

Notes
-----
- Loss threshold: Yeom, S. et al. "Privacy Risk in Machine Learning:
  Analyzing the Connection to Overfitting", CSF 2018 — a record whose loss
  is low was probably trained on; the score is ``-loss``.
- LiRA: Carlini, N. et al. "Membership Inference Attacks From First
  Principles", IEEE S&P 2022, Algorithm 1. Each example's confidence
  ``p`` in its label is logit-scaled, ``φ = log(p / (1 - p))``, which makes
  its distribution over shadow models close to Gaussian. Shadow models
  trained with the example (IN) and without it (OUT) give per-example
  Gaussian fits; the online score is the likelihood ratio
  ``N(φ; μ_in, σ_in²) / N(φ; μ_out, σ_out²)`` (as a log), the offline one
  (OUT shadows only) the one-sided ``P[Z ≤ φ]`` under ``N(μ_out, σ_out²)``.
  With few shadows the paper uses one global variance per side,
  which :func:`lira_online` and :func:`lira_offline` do by default.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from lifecycle.errors import ConfigurationError

_CLIP = 1e-12  # keeps log(p / (1 - p)) finite for p rounded to 0 or 1


def loss_scores(losses: ArrayLike) -> NDArray[np.float64]:
    """Yeom et al.'s score: the negated per-example loss."""
    return -np.asarray(losses, dtype=float)


def logit_confidence(probabilities: ArrayLike) -> NDArray[np.float64]:
    """``log(p / (1 - p))`` of each example's probability of its own label (LiRA's φ)."""
    p = np.clip(np.asarray(probabilities, dtype=float), _CLIP, 1 - _CLIP)
    return np.asarray(np.log(p) - np.log1p(-p), dtype=float)


def _fit(phi: NDArray[np.float64], mask: NDArray[np.bool_], global_variance: bool
         ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-example mean and standard deviation of ``phi`` (shadows × examples) over the shadows in ``mask``."""
    counts = mask.sum(axis=0)
    if np.any(counts == 0):
        raise ConfigurationError("every example needs at least one shadow model on each side of the fit; "
                                 "train more shadow models")
    mean = np.where(mask, phi, 0.0).sum(axis=0) / counts
    residual = np.where(mask, phi - mean, 0.0)
    if global_variance:
        std = np.full(phi.shape[1], np.sqrt((residual ** 2).sum() / max(int(mask.sum()) - 1, 1)))
    else:
        std = np.sqrt((residual ** 2).sum(axis=0) / np.maximum(counts - 1, 1))
    return mean, np.maximum(std, 1e-6)


def _shadow_arrays(shadow_phi: ArrayLike, shadow_in: ArrayLike, target_phi: ArrayLike
                   ) -> tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.float64]]:
    phi = np.asarray(shadow_phi, dtype=float)
    inside = np.asarray(shadow_in, dtype=bool)
    target = np.asarray(target_phi, dtype=float)
    if phi.ndim != 2 or phi.shape != inside.shape or target.shape != (phi.shape[1],):
        raise ConfigurationError("shadow confidences and membership must be (shadows × examples) and the target's "
                                 "one value per example")
    return phi, inside, target


def lira_online(target_phi: ArrayLike, shadow_phi: ArrayLike, shadow_in: ArrayLike, *,
                global_variance: bool = True) -> NDArray[np.float64]:
    """Online LiRA: log-likelihood ratio of the target's φ under the IN and the OUT Gaussian of each example."""
    phi, inside, target = _shadow_arrays(shadow_phi, shadow_in, target_phi)
    mu_in, sd_in = _fit(phi, inside, global_variance)
    mu_out, sd_out = _fit(phi, ~inside, global_variance)
    return np.asarray(stats.norm.logpdf(target, mu_in, sd_in) - stats.norm.logpdf(target, mu_out, sd_out))


def lira_offline(target_phi: ArrayLike, shadow_phi: ArrayLike, shadow_in: ArrayLike, *,
                 global_variance: bool = True) -> NDArray[np.float64]:
    """Offline LiRA: how far the target's φ lies above the OUT Gaussian (its CDF there); IN shadows are unused."""
    phi, inside, target = _shadow_arrays(shadow_phi, shadow_in, target_phi)
    mu_out, sd_out = _fit(phi, ~inside, global_variance)
    return np.asarray(stats.norm.logcdf(target, mu_out, sd_out))
