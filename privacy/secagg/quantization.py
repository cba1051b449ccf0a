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
import numpy.typing as npt

from privacy.secagg.errors import SecAggConfigError


def quantize(values: np.ndarray, scale: float, bound: float, *, overwrite: bool = False) -> np.ndarray:
    """``round(values · scale)`` as uint32 (two's complement); refuses ``|values| > bound``.

    Parameters
    ----------
    values : np.ndarray
        Float vector, every entry within ``[−bound, bound]``.
    scale : float
        Fixed-point scale (``SecAggConfig.effective_scale``).
    bound : float
        ``B`` of the configuration; a larger entry would void the headroom check.
    overwrite : bool
        Scale a float64 ``values`` in place (the caller's buffer is consumed) instead of a copy.
    """
    values = np.asarray(values, dtype=np.float64)
    # max and min propagate NaN, and ±inf lands in one of them: two read-only passes check both
    # finiteness and the bound, without a temporary |values| vector.
    largest = max(float(values.max()), -float(values.min())) if values.size else 0.0
    if not np.isfinite(largest):
        raise SecAggConfigError("cannot quantize a payload with NaN or infinite values")
    if largest > bound * (1 + 1e-12):
        raise SecAggConfigError(
            f"payload coordinate {largest:.6g} exceeds the bound B = {bound:.6g} the headroom was sized for; "
            "the update was not sent (clip it, or lower its weight)"
        )
    in_place = overwrite and values.dtype == np.float64 and values.flags.writeable
    # float64 either way; numpy's stubs type a call with ``out=`` as Any
    scaled: npt.NDArray[np.float64] = np.multiply(values, scale, out=values if in_place else None)
    if largest * scale < 2.0**31 - 1:  # always, under a validated configuration (n ≥ 3 sites share 2^32)
        encoded = np.empty(scaled.shape, dtype=np.int32)
        np.rint(scaled, out=encoded, casting="unsafe")  # exact: |round(x·scale)| < 2^31
        return encoded.view(np.uint32)
    return np.rint(scaled).astype(np.int64).astype(np.uint32)


def dequantize(total: np.ndarray, scale: float) -> np.ndarray:
    """Decode a uint32 sum of encodings back to floats (signed interpretation)."""
    return np.asarray(total, dtype=np.uint32).view(np.int32).astype(np.float64) / scale
