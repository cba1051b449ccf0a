"""Fixed-point encoding of payloads into ``Z_{2^32}`` and decoding of their sum.

``encode(x) = round(x · scale) mod 2^32`` (two's complement), so a sum of
encodings decodes to the sum of the inputs, within ``n / (2·scale)`` per
coordinate, as long as the signed sum stays inside ``(−2^31, 2^31)``: the
headroom :meth:`SecAggConfig.check_headroom` guarantees for inputs bounded by
``B``. Inputs outside ``[−B, B]`` are refused, never wrapped.

Notes
-----
Bonawitz et al. (2017), "Practical Secure Aggregation for Privacy-Preserving
Machine Learning", §3: inputs are vectors in ``Z_R`` and the masks cancel in
the sum modulo ``R``; Bell et al. (2020) keep the same encoding.
"""

from __future__ import annotations

import numpy as np

from privacy.secagg.errors import SecAggConfigError


def quantize(values: np.ndarray, scale: float, bound: float) -> np.ndarray:
    """``round(values · scale)`` as uint32 (two's complement); refuses ``|values| > bound``.

    Parameters
    ----------
    values : np.ndarray
        Float vector, every entry within ``[−bound, bound]``.
    scale : float
        Fixed-point scale (``SecAggConfig.effective_scale``).
    bound : float
        ``B`` of the configuration; a larger entry would void the headroom check.
    """
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise SecAggConfigError("cannot quantize a payload with NaN or infinite values")
    largest = float(np.max(np.abs(values))) if values.size else 0.0
    if largest > bound * (1 + 1e-12):
        raise SecAggConfigError(
            f"payload coordinate {largest:.6g} exceeds the bound B = {bound:.6g} the headroom was sized for; "
            "the update was not sent (clip it, or lower its weight)"
        )
    return np.rint(values * scale).astype(np.int64).astype(np.uint32)


def dequantize(total: np.ndarray, scale: float) -> np.ndarray:
    """Decode a uint32 sum of encodings back to floats (signed interpretation)."""
    return np.asarray(total, dtype=np.uint32).view(np.int32).astype(np.float64) / scale
