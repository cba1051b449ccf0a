"""The one-run privacy audit of Steinke, Nasr & Jagielski (2023): an ε lower bound from one training run.

The auditor draws ``m`` canaries, includes each independently with
probability 1/2 (a seeded coin the trainer never sees), trains once, scores
every canary on the final model, and guesses "in" for the ``k+`` highest
scores and "out" for the ``k-`` lowest, abstaining on the rest. If the
training is (ε, δ)-DP in each record, the number ``v`` of correct guesses
out of ``r`` is stochastically dominated by Binomial(r, e^ε / (1 + e^ε)) up
to a δ term, so a large ``v`` refutes ε: the largest refuted ε at the chosen
confidence is the lower bound ε̂.

Notes
-----
Steinke, T., Nasr, M., Jagielski, M. "Privacy Auditing with One (1)
Training Run", NeurIPS 2023 (arXiv:2305.08846), Theorem 3 and the procedure
of its Appendix D: the p-value of ``v`` correct guesses under (ε, δ)-DP is

    P[Binomial(r, q) ≥ v] + 2 m δ · max_{1 ≤ i ≤ v} P[v - i ≤ Binomial(r, q) < v] / i,   q = e^ε / (1 + e^ε),

and ε̂ = sup{ε : p-value(ε) < 1 - confidence}, found by bisection (the
p-value increases with ε). This module computes it from the formula with
scipy's binomial distribution; nothing of the authors' code is reused.

Choosing ``k`` after looking at the scores would make the confidence
level a lie (the best of many tries); :func:`best_guesses` therefore
divides the error probability by the number of candidate ``k`` it tries
(Bonferroni), so its bound stays valid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from lifecycle.errors import ConfigurationError
from privacy.audit.errors import PrivacyAuditFailed

CONFIDENCE = 0.95
"""The audit's confidence level (the bound is wrong with probability at most 5 %)."""

_EPS_CEILING = 100.0  # beyond this q rounds to 1 in double precision: ε̂ is reported as this ceiling


def _check(m: int, r: int, v: int, delta: float) -> None:
    if not 0 <= v <= r <= m:
        raise ConfigurationError(f"audit counts must satisfy 0 ≤ correct ({v}) ≤ guesses ({r}) ≤ canaries ({m})")
    if not 0 <= delta < 1:
        raise ConfigurationError(f"audit δ = {delta}: use a δ in [0, 1)")


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of at least ``v`` correct guesses out of ``r`` under (ε, δ)-DP with ``m`` canaries (Theorem 3).

    Raises
    ------
    ConfigurationError
        The counts are impossible (``0 ≤ v ≤ r ≤ m``) or δ is outside [0, 1).
    """
    _check(m, r, v, delta)
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) ≥ v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[B = v-1], P[B = v-2], ..., P[B = 0]
    ratio = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
    return min(tail + 2.0 * m * delta * ratio, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = CONFIDENCE) -> float:
    """ε̂: the largest ε that ``v`` correct guesses out of ``r`` refute at ``confidence`` (0 when none is refuted).

    Bisection to 1e-6 on the monotone p-value of :func:`p_value`.
    """
    if not 0 < confidence < 1:
        raise ConfigurationError(f"audit confidence {confidence}: use a level strictly between 0 and 1")
    alpha = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < alpha:
        low, high = high, 2 * high
        if high > _EPS_CEILING:
            return _EPS_CEILING
    while high - low > 1e-6:
        middle = (low + high) / 2
        if p_value(m, r, v, middle, delta) < alpha:
            low = middle
        else:
            high = middle
    return low


@dataclass(frozen=True)
class Guesses:
    """How many guesses were made (``r``), how many were right (``v``), with ``k+`` "in" and ``k-`` "out"."""

    r: int
    v: int
    k_in: int
    k_out: int


def guess(scores: ArrayLike, included: ArrayLike, k_in: int, k_out: int) -> Guesses:
    """Guess "in" for the ``k_in`` highest scores and "out" for the ``k_out`` lowest; abstain on the rest.

    Ties are broken by position (a stable sort), never by the secret bits.
    """
    s = np.asarray(scores, dtype=float)
    bits = np.asarray(included, dtype=bool)
    if s.shape != bits.shape or s.ndim != 1:
        raise ConfigurationError("scores and inclusion bits must be two vectors of the same length")
    if k_in < 0 or k_out < 0 or k_in + k_out > s.size:
        raise ConfigurationError(f"k+ = {k_in} and k- = {k_out} guesses: need 0 ≤ k+ + k- ≤ {s.size} canaries")
    order = np.argsort(-s, kind="stable")
    correct = int(bits[order[:k_in]].sum()) + int((~bits[order[s.size - k_out:]]).sum() if k_out else 0)
    return Guesses(k_in + k_out, correct, k_in, k_out)


def candidate_ks(m: int) -> tuple[int, ...]:
    """The guess counts :func:`best_guesses` tries per side: 1 %, 2 %, 5 %, 10 %, 20 %, 30 %, 50 % of ``m``."""
    return tuple(sorted({max(1, round(f * m)) for f in (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)} - {0}))


def best_guesses(scores: ArrayLike, included: ArrayLike, delta: float, confidence: float = CONFIDENCE,
                 ks: Sequence[int] | None = None) -> tuple[Guesses, float]:
    """The ``k+ = k-`` among ``ks`` with the highest ε̂ (ties: the larger), each at a Bonferroni-corrected level.

    Returns the chosen guesses and their ε̂ at ``1 - (1 - confidence) / len(ks)``,
    which holds at ``confidence`` for the choice as a whole.
    """
    s = np.asarray(scores, dtype=float)
    tries = tuple(k for k in (ks or candidate_ks(s.size)) if 2 * k <= s.size) or (s.size // 2,)
    level = 1.0 - (1.0 - confidence) / len(tries)
    best: tuple[Guesses, float] | None = None
    for k in tries:
        g = guess(s, included, k, k)
        bound = epsilon_lower_bound(s.size, g.r, g.v, delta, level)
        if best is None or bound >= best[1]:  # ties: the larger k (more guesses to report)
            best = (g, bound)
    assert best is not None
    return best


@dataclass(frozen=True)
class AuditResult:
    """One audit's numbers, as ``metrics.privacy_audit`` records them (signed into the ML-BOM)."""

    canaries: int
    included: int
    guesses: int
    correct: int
    k_in: int
    k_out: int
    epsilon_lower_bound: float
    epsilon: float | None
    delta: float
    confidence: float
    passed: bool
    method: str = "one-run (Steinke, Nasr & Jagielski 2023), loss scores, k+ = k-, Bonferroni over k"

    def to_dict(self) -> dict[str, Any]:
        """The JSON the registry and the BOM hold (the governance gate reads ``passed``)."""
        return asdict(self)


def audit(scores: ArrayLike, included: ArrayLike, *, epsilon: float | None, delta: float,
          confidence: float = CONFIDENCE) -> AuditResult:
    """Guess, bound, and compare with the claimed ``epsilon`` (``None``: no DP claim, nothing to refute).

    ``passed`` is ``ε̂ ≤ ε``; :func:`raise_if_failed` turns a failure into
    :class:`~privacy.audit.errors.PrivacyAuditFailed`.
    """
    bits = np.asarray(included, dtype=bool)
    guesses, bound = best_guesses(scores, bits, delta, confidence)
    passed = epsilon is None or bound <= epsilon
    return AuditResult(int(bits.size), int(bits.sum()), guesses.r, guesses.v, guesses.k_in, guesses.k_out,
                       bound, epsilon, delta, confidence, passed)


def raise_if_failed(section: dict[str, Any] | None, what: str = "the run") -> None:
    """Raise :class:`PrivacyAuditFailed` when an audit section says ``passed: false``.

    Raises
    ------
    PrivacyAuditFailed
        ε̂ > ε: the ledger under-reports what the training leaks.
    """
    if section is None or section.get("passed", True):
        return
    raise PrivacyAuditFailed(
        f"privacy audit of {what} failed: empirical lower bound ε̂ = {section['epsilon_lower_bound']:.3f} exceeds "
        f"the ledger's ε = {section['epsilon']:.3f} (δ = {section['delta']}, {section['correct']}/{section['guesses']}"
        " canary guesses right): the DP accounting or noise is broken — check the sites' DP-SGD settings and ledger "
        "before trusting this model")


def included_bits(m: int, seed: int) -> NDArray[np.bool_]:
    """Each of ``m`` canaries in with probability 1/2, from ``seed`` (the auditor's secret coin)."""
    return np.random.default_rng([seed, 0x5EED]).random(m) < 0.5
