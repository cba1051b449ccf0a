"""How unlikely a trigger-set accuracy is for a model that never saw the secret.

Notes
-----
A model trained without the secret predicts independently of its random labels,
so the number of agreements on ``n`` triggers is ``X ~ Binomial(n, chance)``
with ``chance = 1 / num_classes``. The p-value of observing ``k`` agreements is
``P(X >= k)`` (Adi et al., 2018, Sec. 4; Tekgul et al., 2021, WAFFLE, Sec. 5).
"""

from __future__ import annotations

from scipy.stats import binom  # type: ignore[import-untyped, unused-ignore]

from lifecycle.errors import ConfigurationError


def binomial_p_value(correct: int, n: int, chance: float) -> float:
    """``P(X >= correct)`` for ``X ~ Binomial(n, chance)``.

    Parameters
    ----------
    correct : int
        Number of trigger inputs the model labels as the secret says, ``0..n``.
    n : int
        Number of trigger inputs, at least 1.
    chance : float
        Probability of one agreement by chance, in ``(0, 1)``.

    Returns
    -------
    float
        The one-sided p-value; ``1.0`` when ``correct == 0``.

    Notes
    -----
    Computed as the survival function ``binom.sf(correct - 1, n, chance)``
    (regularized incomplete beta), accurate far below ``1e-16``, where
    ``1 - cdf`` would round to zero.
    """
    if n < 1 or not 0 <= correct <= n or not 0.0 < chance < 1.0:
        raise ConfigurationError(
            f"binomial p-value needs 0 <= correct <= n, n >= 1 and 0 < chance < 1; "
            f"got correct={correct}, n={n}, chance={chance}"
        )
    return float(binom.sf(correct - 1, n, chance))
