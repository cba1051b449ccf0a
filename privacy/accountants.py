"""Privacy accountants: ε from (noise multiplier, sample rate, steps), via Opacus.

fedguard never re-implements accounting: it wraps Opacus' accountants behind
one registry (``create_accountant("rdp")``) so that the mechanism is named in
every ML-BOM and an auditor can recompute ε with an accountant of their own.

Notes
-----
RDP accounting of the subsampled Gaussian mechanism follows Mironov (2017),
"Rényi Differential Privacy", and Mironov, Talwar & Zhang (2019); DP-SGD is
Abadi et al. (2016), "Deep Learning with Differential Privacy". PRV
accounting is Gopi, Lee & Wutschitz (2021), "Numerical Composition of
Differential Privacy". The RDP → (ε, δ) conversion Opacus applies is the
tighter one of Balle et al. (2020), "Hypothesis Testing Interpretations and
Renyi Differential Privacy"; with the classic conversion ε = RDP(α) +
log(1/δ)/(α − 1) the same RDP curve reproduces the moments-accountant value
Abadi et al. publish (ε ≈ 1.26 at q = 0.01, σ = 4, T = 10 000, δ = 1e-5).
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from collections.abc import Callable, KeysView, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from types import ModuleType
from typing import TYPE_CHECKING

from lifecycle.errors import ConfigurationError

if TYPE_CHECKING:  # Opacus (and with it torch) is imported by the functions that compute ε, not here
    import numpy as np
    from opacus.accountants import IAccountant

AccountantFactory = Callable[[], "IAccountant"]
"""Builds a fresh Opacus-compatible accountant (``history`` of ``(σ, q, steps)``, ``get_epsilon(delta)``)."""


def _opacus_accountant(name: str) -> IAccountant:
    from opacus.accountants import create_accountant as opacus_create

    return opacus_create(name)


_FACTORIES: dict[str, AccountantFactory] = {
    "rdp": lambda: _opacus_accountant("rdp"),
    "prv": lambda: _opacus_accountant("prv"),
}

ACCOUNTANTS: KeysView[str] = _FACTORIES.keys()
"""Names :func:`create_accountant` knows (a live view: registering adds to it)."""
OPACUS_DEFAULT_ORDERS: tuple[float, ...] = (*(1 + x / 10.0 for x in range(1, 100)), *range(12, 64))
"""Opacus' ``RDPAccountant.DEFAULT_ALPHAS``, written out so that importing this module does not import
Opacus (whose package imports torch); ``tests/privacy/test_accountants.py`` checks they stay equal."""
RDP_ORDERS: tuple[float, ...] = (*OPACUS_DEFAULT_ORDERS, 128, 256, 512, 1024)
"""Rényi orders searched: Opacus' defaults plus the large orders Google's dp-accounting also uses
(they matter when ε is small: large σ, tiny q)."""

__all__ = [
    "ACCOUNTANTS", "GaussianHistory", "calibrate_noise", "compose", "create_accountant",
    "epsilon_series", "naive_epsilon_sum", "register_accountant",
]


def create_accountant(name: str) -> IAccountant:
    """A fresh accountant by name (``rdp``, ``prv``, or one added with :func:`register_accountant`).

    Raises
    ------
    ConfigurationError
        No accountant of that name is registered.
    """
    if name not in _FACTORIES:
        raise ConfigurationError(f"unknown accountant '{name}'; choose one of {', '.join(ACCOUNTANTS)}")
    return _FACTORIES[name]()


def register_accountant(name: str, factory: AccountantFactory, *, replace: bool = False) -> None:
    """Make ``name`` usable wherever an accountant is named (run config, caps, :func:`compose`).

    The factory's accountant must compose a ``history`` of ``(σ, q, steps)``
    triples and answer ``get_epsilon(delta=...)``, as Opacus' accountants do
    (Opacus registers its own the same way, ``opacus.accountants.create_accountant``).

    Raises
    ------
    ConfigurationError
        ``name`` is taken and ``replace`` is false.
    """
    if name in _FACTORIES and not replace:
        raise ConfigurationError(f"accountant '{name}' is already registered; pass replace=True to override it")
    _FACTORIES[name] = factory


@dataclass(frozen=True)
class GaussianHistory:
    """Everything that determines ε of a subsampled Gaussian mechanism run."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str = "rdp"

    def epsilon(self) -> float:
        """ε spent after ``steps`` steps (0 before the first step)."""
        return compose([self], self.delta, self.accountant)


def calibrate_noise(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The smallest σ (within Opacus' tolerance) whose ε after ``steps`` stays ≤ target."""
    if target_epsilon <= 0 or not 0 < delta < 1:
        raise ConfigurationError(
            f"invalid privacy target ε={target_epsilon}, δ={delta}: use ε > 0 and 0 < δ < 1"
        )
    if not 0 < sample_rate <= 1 or steps < 1:
        raise ConfigurationError(f"invalid sampling (q={sample_rate}, steps={steps})")
    return _calibrated(float(target_epsilon), float(delta), float(sample_rate), int(steps), accountant)


@lru_cache(maxsize=256)
def _calibrated(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """:func:`calibrate_noise`'s search, once per process for the same inputs (a simulation's equal-sized sites).

    The search is deterministic (a bisection over the accountant, ~0.4 s of CPU
    for the RDP accountant); caching returns exactly the σ it would find again.
    Opacus stops its bisection within an *absolute* ε tolerance (0.01 by
    default): at a small target (ε = 0.06) that let σ spend only 84 % of the
    budget, so the tolerance is 1 % of the target there (never above Opacus').
    """
    from opacus.accountants.utils import get_noise_multiplier

    kwargs = _epsilon_kwargs(accountant)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                steps=steps, accountant=accountant, epsilon_tolerance=min(0.01, 0.01 * target_epsilon),
                **kwargs,
            )
        )


def _epsilon_kwargs(accountant: str) -> dict[str, object]:
    return {"alphas": list(RDP_ORDERS)} if accountant == "rdp" else {}


def _merged(histories: Sequence[GaussianHistory]) -> list[tuple[float, float, int]]:
    """Opacus history tuples ``(σ, q, steps)``, entries of equal (σ, q) merged.

    Merging is exact (the same mechanism composed ``a`` then ``b`` times is the
    same mechanism composed ``a + b`` times) and keeps PRV's grid small.
    """
    steps: dict[tuple[float, float], int] = {}
    for h in histories:
        if h.steps > 0:
            key = (float(h.noise_multiplier), float(h.sample_rate))
            steps[key] = steps.get(key, 0) + int(h.steps)
    return [(sigma, q, n) for (sigma, q), n in sorted(steps.items())]


def compose(histories: Sequence[GaussianHistory], delta: float, accountant: str = "rdp") -> float:
    """ε at ``delta`` of running every history in ``histories`` one after another.

    Parameters
    ----------
    histories
        Subsampled Gaussian runs, possibly with different σ, q and step counts
        (rounds of one run, runs on one dataset manifest). Their own ``delta``
        and ``accountant`` fields are ignored: the composition is evaluated at
        ``delta`` with ``accountant``.
    delta
        The δ of the reported (ε, δ) guarantee.
    accountant
        ``"rdp"`` (default; exact composition of Rényi divergences, fast) or
        ``"prv"`` (tighter numerically, slower).

    Returns
    -------
    float
        The composed ε (0 for an empty history).

    Notes
    -----
    Composition is done in the accountant's own domain (Rényi divergences add
    up order by order, Mironov 2017, Prop. 1; privacy-loss distributions
    convolve, Gopi, Lee & Wutschitz 2021) and converted to (ε, δ) once at the
    end. That is much tighter than adding per-run ε's (basic composition,
    Dwork & Roth 2014, Thm. 3.16, see :func:`naive_epsilon_sum`), which is
    valid but only at δ = Σ δᵢ.
    """
    _check_delta(delta)
    merged = _merged(histories)
    if not merged:
        return 0.0
    if accountant == "rdp":
        return _rdp_compose(merged, delta)
    acc = create_accountant(accountant)
    acc.history = merged
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        return float(acc.get_epsilon(delta=delta, **_epsilon_kwargs(accountant)))


@cache
def _opacus_rdp() -> ModuleType:
    """Opacus' RDP analysis (``opacus.accountants.analysis.rdp``), without torch while Opacus is not loaded yet.

    That module needs only numpy and scipy, but importing it through its
    package runs ``opacus/__init__.py``, which imports torch (seconds). A
    command that only reads a ledger (``fedguard privacy ledger``) loads the
    same file on its own instead, so that composing ε stays Opacus' code and
    costs no torch start-up; a process that already imported Opacus uses it.
    """
    if "opacus" in sys.modules:
        return importlib.import_module("opacus.accountants.analysis.rdp")
    package = importlib.util.find_spec("opacus")  # locates the package without running its __init__
    if package is None or not package.submodule_search_locations:
        raise ConfigurationError("Opacus is not installed: install fedguard with its dependencies")
    path = f"{list(package.submodule_search_locations)[0]}/accountants/analysis/rdp.py"
    spec = importlib.util.spec_from_file_location("fedguard_opacus_rdp", path)
    if spec is None or spec.loader is None:
        raise ConfigurationError(f"Opacus' RDP analysis is missing from {path}: reinstall opacus")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=4096)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """The RDP curve of one subsampled Gaussian step over :data:`RDP_ORDERS` (cached: it is the costly part)."""
    curve: np.ndarray = _opacus_rdp().compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                                  orders=list(RDP_ORDERS))
    curve.flags.writeable = False
    return curve


def _rdp_compose(merged: Sequence[tuple[float, float, int]], delta: float) -> float:
    """RDP composition: the per-step curves times their step counts add up order by order (Mironov 2017).

    Cached by inputs: the sites of a run share σ, q and step counts, so a round asks for the same ε
    once per site at each of them and again at the coordinator's ledger.
    """
    return _rdp_epsilon(tuple(merged), delta)


@lru_cache(maxsize=4096)
def _rdp_epsilon(merged: tuple[tuple[float, float, int], ...], delta: float) -> float:
    get_privacy_spent = _opacus_rdp().get_privacy_spent
    total = sum(_rdp_per_step(sigma, q) * steps for sigma, q, steps in merged)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        eps, _ = get_privacy_spent(orders=list(RDP_ORDERS), rdp=total, delta=delta)
    return float(eps)


def naive_epsilon_sum(histories: Sequence[GaussianHistory]) -> tuple[float, float]:
    """Basic composition: ``(Σ εᵢ, Σ δᵢ)`` of each history at its own δ and accountant.

    Reported beside :func:`compose` for comparison only: it is a valid bound
    but loose (it grows linearly where RDP composition grows like √k).
    """
    eps = sum(h.epsilon() for h in histories if h.steps > 0)
    delta = sum(h.delta for h in histories if h.steps > 0)
    return float(eps), float(delta)


def epsilon_series(
    noise_multiplier: float, sample_rate: float, steps_per_round: int, rounds: int, delta: float,
    accountant: str = "rdp",
) -> list[float]:
    """ε after each of ``rounds`` rounds of ``steps_per_round`` subsampled Gaussian steps.

    Element ``r - 1`` is the ε reported after round ``r``: the guarantee of
    the model released at that round. Use it for both record-level DP-SGD
    (steps per round = local epochs × steps per epoch, q = batch / N) and
    site-level DP (one step per round, q = sampled sites / total sites).

    Notes
    -----
    With RDP the series costs one RDP evaluation: the (ε, δ) conversion of
    Balle et al. (2020) is applied to ``r`` times the per-step RDP curve.
    """
    _check_delta(delta)
    if rounds < 0 or steps_per_round < 0:
        raise ConfigurationError(f"invalid schedule: rounds={rounds}, steps per round={steps_per_round}")
    if accountant == "rdp":
        get_privacy_spent = _opacus_rdp().get_privacy_spent
        orders = list(RDP_ORDERS)
        per_round = _rdp_per_step(float(noise_multiplier), float(sample_rate)) * steps_per_round
        series = []
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the")
            for r in range(1, rounds + 1):
                eps, _ = get_privacy_spent(orders=orders, rdp=per_round * r, delta=delta)
                series.append(float(eps) if steps_per_round > 0 else 0.0)
        return series
    return [
        compose([GaussianHistory(noise_multiplier, sample_rate, steps_per_round * r, delta)], delta, accountant)
        for r in range(1, rounds + 1)
    ]


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ConfigurationError(f"invalid δ={delta}: use 0 < δ < 1 (typically below 1 / number of records)")
