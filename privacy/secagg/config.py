"""The parameters of one SecAgg+ federation, and the headroom check that guards the modulus.

Every site masks the fixed-point payload ``[w·Δ, w]`` in ``Z_{2^32}``. The
coordinator can only decode the sum if it never wraps around, so the
configuration is checked before any round runs::

    B = max_weight · max(clip_norm, 1)        bound on |every payload coordinate|
    n · (2 · B · scale + 1)  <  2^32           the signed sum of n sites fits in uint32

(``‖Δ‖₂ ≤ C`` bounds each coordinate of ``Δ`` by ``C``, the weight ``w`` is at
most ``max_weight``, and rounding adds at most ½ per site). A configuration
that could overflow is refused with the numbers and the largest scale that
would fit; it is never wrapped silently.

Notes
-----
The neighbour degree ``k`` and the threshold ``t`` follow Bell et al. (2020),
"Secure Single-Server Aggregation with (Poly)Logarithmic Overhead" (CCS'20):
each site shares its secrets only with its ``k`` neighbours in a k-regular
graph, ``k = O(log n)``, and any ``t`` of them can recover them; ``t > k/2``
keeps a neighbourhood's minority from reconstructing. The fixed-point
encoding and masking in ``Z_{2^32}`` follow Bonawitz et al. (2017),
"Practical Secure Aggregation for Privacy-Preserving Machine Learning" (CCS'17).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from privacy.secagg.errors import SecAggConfigError

MODULUS_BITS = 32
MODULUS = 1 << MODULUS_BITS
WEIGHTINGS = ("examples", "uniform")


@dataclass(frozen=True)
class SecAggConfig:
    """SecAgg+ parameters (frozen; call :meth:`validate`, done by every consumer).

    Parameters
    ----------
    num_sites : int
        The largest number of sites a round may sample (the headroom is sized for it).
    threshold : int
        ``t``: shares needed to rebuild a site's secrets; also the fewest sites
        that may survive any stage. ``k/2 < t ≤ k``.
    num_neighbours : int
        ``k``: degree of the neighbour graph. Even, or odd when the round's site
        count is even; ``k < n`` for the sampled ``n``.
    clip_norm : float
        L2 bound ``C`` every site's update is clipped to (inside the client mod).
    max_weight : float
        Largest weight ``w`` one site may give its update (examples, or 1 when uniform).
    scale : float or None
        Fixed-point scale; ``None`` picks the largest power of two that fits the headroom.
    weighting : str
        ``"examples"`` (weight = the reply's ``weight_key`` metric) or ``"uniform"`` (1).
    weight_key : str
        MetricRecord key of the example count in the ClientApp's train reply.

    Notes
    -----
    Any ``k − t`` sites may drop out at any stage and the round still completes
    (Bell et al. 2020); more dropouts complete only when every affected site
    keeps ``t`` live neighbours, otherwise the round aborts.
    """

    num_sites: int
    threshold: int
    num_neighbours: int
    clip_norm: float
    max_weight: float
    scale: float | None = None
    weighting: str = "examples"
    weight_key: str = "num-examples"

    @classmethod
    def recommended(cls, num_sites: int, clip_norm: float, max_weight: float, **kwargs: Any) -> SecAggConfig:
        """``k ≈ 2⌈log₂ n⌉`` (even, capped at ``n−1``) and ``t = ⌊k/2⌋ + 1`` (Bell et al. 2020).

        Notes
        -----
        Bell et al. (2020) need ``k = O(log n)`` neighbours for privacy and correctness
        with probability ``1 − 2^−σ`` (resp. ``1 − 2^−η``) against a fraction γ of
        corrupted and δ of dropped clients; the constants depend on σ, η, γ, δ. At small
        ``n`` no statistical margin is left: each site's neighbours are a uniformly random
        ``k``-subset of the others, so one colluder (or dropout) beyond what ``t`` tolerates
        outright already fails with probability ~10⁻² per site at ``n = 20`` (hypergeometric
        tail; see ``docs/secure-aggregation.md``). The guarantee that holds is therefore
        the deterministic one: any ``t − 1`` colluding sites learn nothing, any ``k − t``
        dropouts are survived, and the honest survivors stay connected while fewer than
        ``k`` sites are corrupted or dropped (the graph is ``k``-connected). At ``n = 20``
        this default (``k = 10``, ``t = 6``) tolerates 5 colluders (25 %) and 4 dropouts
        (20 %); ``k = 4``, ``t = 3`` (Flower's five shares) only 2 and 1. A smaller ``k``
        is cheaper (``k + 1`` mask expansions and ``2k`` key agreements per site) but
        tolerates proportionally fewer: pass ``num_neighbours``/``threshold`` explicitly
        to trade them, knowing the fractions given up.
        """
        if num_sites < 3:
            raise SecAggConfigError(f"secure aggregation needs at least 3 sites, got {num_sites}")
        k = min(num_sites - 1, max(4, 2 * math.ceil(math.log2(num_sites))))
        if k % 2 and num_sites % 2:
            k -= 1
        return cls(num_sites, k // 2 + 1, k, clip_norm, max_weight, **kwargs).validate()

    @property
    def bound(self) -> float:
        """``B``: the largest magnitude any payload coordinate (``w·Δ_i`` or ``w``) can take."""
        return self.max_weight * max(self.clip_norm, 1.0)

    @property
    def dropout_tolerance(self) -> int:
        """Sites that may drop out anywhere, at any stage, without failing the round: ``k − t``."""
        return self.num_neighbours - self.threshold

    @property
    def effective_scale(self) -> float:
        """The fixed-point scale in use (the configured one, or the largest power of two that fits)."""
        if self.scale is not None:
            return float(self.scale)
        limit = (MODULUS - 2) / self.num_sites
        scale = 2.0 ** math.floor(math.log2(max((limit - 1) / (2 * self.bound), 1e-300)))
        while self.num_sites * (2 * self.bound * scale + 1) >= MODULUS:
            scale /= 2
        return scale

    def validate(self) -> SecAggConfig:
        """Check every rule and the headroom; raise :class:`SecAggConfigError` with the numbers."""
        n, t, k = self.num_sites, self.threshold, self.num_neighbours
        if n < 3:
            raise SecAggConfigError(f"secure aggregation needs at least 3 sites, got num_sites={n}")
        if not 2 <= k < n:
            raise SecAggConfigError(f"num_neighbours must be in [2, num_sites) = [2, {n}), got {k}")
        if not (k // 2 < t <= k):
            raise SecAggConfigError(
                f"threshold must satisfy k/2 < t ≤ k = {k} (a majority of a site's neighbours), got {t}"
            )
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise SecAggConfigError(f"clip_norm must be a positive number, got {self.clip_norm}")
        if not (math.isfinite(self.max_weight) and self.max_weight > 0):
            raise SecAggConfigError(f"max_weight must be a positive number, got {self.max_weight}")
        if self.weighting not in WEIGHTINGS:
            raise SecAggConfigError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.weighting == "uniform" and self.max_weight < 1:
            raise SecAggConfigError("uniform weighting gives every site weight 1: max_weight must be ≥ 1")
        self.check_headroom(n)
        return self

    def check_headroom(self, num_sites: int) -> None:
        """Refuse (with the numbers) a scale at which ``num_sites`` payloads could wrap the modulus."""
        scale, bound = self.effective_scale, self.bound
        if not (math.isfinite(scale) and scale > 0):
            raise SecAggConfigError(f"scale must be a positive number, got {scale}")
        need = num_sites * (2 * bound * scale + 1)
        if need >= MODULUS:
            fits = (MODULUS - 2) / num_sites
            largest = (fits - 1) / (2 * bound)
            raise SecAggConfigError(
                f"SecAgg+ sum could overflow: n·(2·B·scale + 1) = {num_sites}·(2·{bound:g}·{scale:g} + 1) "
                f"= {need:.4g} ≥ 2^{MODULUS_BITS} = {MODULUS} (B = max_weight·max(clip_norm, 1) = "
                f"{self.max_weight:g}·max({self.clip_norm:g}, 1)); use scale ≤ {largest:.6g}, "
                "or lower max_weight, clip_norm or the number of sites"
            )
        if scale < 1:
            raise SecAggConfigError(
                f"SecAgg+ quantization too coarse: scale {scale:g} < 1 (step {1 / scale:g}) for "
                f"{num_sites} sites with B = {bound:g}; lower max_weight or clip_norm, or use fewer sites per round"
            )

    def check_round(self, num_sampled: int) -> None:
        """Refuse a round whose sampled site count does not fit this configuration."""
        k, t = self.num_neighbours, self.threshold
        if num_sampled > self.num_sites:
            raise SecAggConfigError(
                f"round sampled {num_sampled} sites but SecAgg+ headroom was sized for num_sites={self.num_sites}; "
                "raise num_sites (and re-check the scale)"
            )
        if num_sampled <= k:
            raise SecAggConfigError(
                f"round sampled {num_sampled} sites: need more than num_neighbours={k} (k < n); "
                "sample more sites or lower num_neighbours"
            )
        if num_sampled < t:
            raise SecAggConfigError(f"round sampled {num_sampled} sites, fewer than the threshold t={t}")
        if k % 2 and num_sampled % 2:
            raise SecAggConfigError(
                f"a {k}-regular neighbour graph (k odd) needs an even number of sites, got {num_sampled}; "
                "use an even num_neighbours"
            )

    def to_record_dict(self) -> dict[str, Any]:
        """The protocol parameters as ConfigRecord values (hyphenated keys; scale resolved)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}  # flat: no asdict deep copy
        values["scale"] = self.effective_scale
        return {key.replace("_", "-"): value for key, value in values.items()}

    @classmethod
    def from_record_dict(cls, record: Any) -> SecAggConfig:
        """Inverse of :meth:`to_record_dict` (raises :class:`SecAggConfigError` on missing keys)."""
        try:
            return cls(
                num_sites=int(record["num-sites"]), threshold=int(record["threshold"]),
                num_neighbours=int(record["num-neighbours"]), clip_norm=float(record["clip-norm"]),
                max_weight=float(record["max-weight"]), scale=float(record["scale"]),
                weighting=str(record["weighting"]), weight_key=str(record["weight-key"]),
            ).validate()
        except KeyError as missing:
            raise SecAggConfigError(f"the secagg record lacks the parameter {missing}") from None
