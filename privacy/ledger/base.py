"""The privacy-ledger interface, its values and errors.

A ledger holds *charges* (:class:`Charge`): "site S's dataset with manifest M
went through ``steps`` steps of a subsampled Gaussian mechanism (σ, q) in
round R of run X, at record or site level". What a site has spent on a
manifest is the accountant's ε for the *composition of all its charges*, over
every run and round ever recorded, not the sum of per-run ε's.

Both the coordinator (in the registry database) and each site agent (in a
local SQLite file) keep one. Charges are written *before* the update they
pay for is released (a reservation), and :meth:`PrivacyLedger.record`
refuses, atomically, a charge that would take the spend past the cap; so no
sequence of runs, restarts or failures makes the recorded spend exceed a cap.
A failed round stays charged (conservative); recording the same
(site, manifest, run, round, kind) again is a no-op.

Notes
-----
Composition of RDP curves: Mironov (2017), "Rényi Differential Privacy",
Prop. 1; basic composition (Σ εᵢ at Σ δᵢ), reported for comparison: Dwork &
Roth (2014), "The Algorithmic Foundations of Differential Privacy", Thm. 3.16.
Datasets with different manifests are treated as disjoint (parallel
composition, McSherry 2009); a revised dataset that shares records with an
older one must keep the older manifest's charges (see docs/privacy.md).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from lifecycle.errors import ConfigurationError, FedguardError, StateError
from privacy.accountants import ACCOUNTANTS, GaussianHistory, compose, naive_epsilon_sum

Kind = Literal["record", "site", "reference"]
KINDS: tuple[str, ...] = ("record", "site", "reference")
"""Mechanisms a site pays for: DP-SGD steps (``record``), site-level DP rounds (``site``), and the
noised reference histograms it releases through a secure sum (``reference``, :mod:`privacy.discrete_gaussian`)."""
ANY = "*"


class PrivacyBudgetExceeded(FedguardError, RuntimeError):
    """A charge would take a site's ε on a manifest past its cap; nothing was recorded or released.

    Attributes carry the numbers: ``site``, ``manifest``, ``kind``,
    ``spent`` (ε so far), ``projected`` (ε with the new charge), ``cap`` and
    ``delta`` (the δ both are evaluated at).
    """

    exit_code = 8

    def __init__(self, site: str, manifest: str, kind: str, spent: float, projected: float,
                 cap: float, delta: float) -> None:
        super().__init__(
            f"site '{site}' would spend ε={projected:.4g} (δ={delta:g}) of {kind}-level privacy on "
            f"dataset {manifest[:16]}, over its cap ε={cap:.4g} (spent so far ε={spent:.4g}); "
            "the round was refused: leave the site out, raise its cap deliberately "
            "('fedguard privacy cap'), or use more noise"
        )
        self.site, self.manifest, self.kind = site, manifest, kind
        self.spent, self.projected, self.cap, self.delta = spent, projected, cap, delta


class LedgerConflictError(StateError):
    """The same (site, manifest, run, round, kind) was recorded before with different parameters."""


@dataclass(frozen=True)
class Charge:
    """One ledger entry, as a value (see :class:`privacy.ledger.tables.LedgerEntry`)."""

    site: str
    manifest: str
    run_id: str
    round: int
    kind: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str = "rdp"
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigurationError(f"unknown DP kind '{self.kind}'; use one of {', '.join(KINDS)}")
        if not self.site or self.site == ANY or not self.manifest or self.manifest == ANY:
            raise ConfigurationError("a charge needs a concrete site name and dataset manifest")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigurationError(f"unknown accountant '{self.accountant}'")
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise ConfigurationError(f"a charge needs a positive noise multiplier, got {self.noise_multiplier}")
        if not 0 < self.sample_rate <= 1 or self.steps < 0 or not 0 < self.delta < 1:
            raise ConfigurationError(
                f"invalid charge q={self.sample_rate}, steps={self.steps}, δ={self.delta}"
            )

    @property
    def key(self) -> tuple[str, str, str, int, str]:
        return (self.site, self.manifest, self.run_id, self.round, self.kind)

    def history(self) -> GaussianHistory:
        return GaussianHistory(self.noise_multiplier, self.sample_rate, self.steps, self.delta, self.accountant)

    def same_mechanism(self, other: Charge) -> bool:
        """Equal parameters (the timestamp aside): a repeated record of the same round."""
        return replace(self, created_at=None) == replace(other, created_at=None)


@dataclass(frozen=True)
class Cap:
    """A budget; ``*`` in site, manifest or kind matches anything."""

    site: str
    manifest: str
    kind: str
    epsilon: float
    delta: float
    accountant: str = "rdp"

    def specificity(self) -> tuple[bool, bool, bool]:
        return (self.site != ANY, self.manifest != ANY, self.kind != ANY)

    def matches(self, site: str, manifest: str, kind: str) -> bool:
        return all(mine in (ANY, theirs) for mine, theirs in
                   ((self.site, site), (self.manifest, manifest), (self.kind, kind)))


def applicable_cap(caps: Sequence[Cap], site: str, manifest: str, kind: str) -> Cap | None:
    """The most specific matching cap (site, then manifest, then kind beats ``*``)."""
    found = [c for c in caps if c.matches(site, manifest, kind)]
    return max(found, key=Cap.specificity) if found else None


@dataclass(frozen=True)
class Projection:
    """ε so far and with an extra charge, against the applicable cap, at one δ."""

    site: str
    manifest: str
    kind: str
    spent: float
    projected: float
    delta: float
    cap: Cap | None

    @property
    def allowed(self) -> bool:
        return self.cap is None or self.projected <= self.cap.epsilon

    def raise_if_over(self) -> None:
        if not self.allowed:
            assert self.cap is not None
            raise PrivacyBudgetExceeded(self.site, self.manifest, self.kind, self.spent, self.projected,
                                        self.cap.epsilon, self.delta)


@dataclass(frozen=True)
class LedgerSummary:
    """One row of ``fedguard privacy ledger``: a site's spend on one manifest at one DP level."""

    site: str
    manifest: str
    kind: str
    charges: int
    runs: int
    steps: int
    epsilon: float
    epsilon_naive: float
    delta: float
    accountant: str
    epsilon_cap: float | None
    epsilon_remaining: float | None


def evaluate(charges: Sequence[Charge], cap: Cap | None,
             extra: Sequence[GaussianHistory] = ()) -> tuple[float, float, str]:
    """(ε spent, δ, accountant) of ``charges`` plus ``extra``, composed at the cap's δ.

    Without a cap the δ is the largest δ any charge was made at and the
    accountant is RDP.
    """
    delta = cap.delta if cap is not None else max((c.delta for c in charges), default=1e-5)
    for h in extra:
        if cap is None:
            delta = max(delta, h.delta)
    accountant = cap.accountant if cap is not None else "rdp"
    histories = [c.history() for c in charges] + list(extra)
    return compose(histories, delta, accountant), delta, accountant


def summarize(site: str, manifest: str, kind: str, charges: Sequence[Charge], cap: Cap | None) -> LedgerSummary:
    """One ledger row: a site's charges on one dataset and kind, composed, with their naive sum and the cap left."""
    eps, delta, accountant = evaluate(charges, cap)
    naive, _ = naive_epsilon_sum([c.history() for c in charges])
    return LedgerSummary(
        site=site, manifest=manifest, kind=kind, charges=len(charges),
        runs=len({c.run_id for c in charges}), steps=sum(c.steps for c in charges), epsilon=eps,
        epsilon_naive=naive, delta=delta, accountant=accountant,
        epsilon_cap=None if cap is None else cap.epsilon,
        epsilon_remaining=None if cap is None else max(0.0, cap.epsilon - eps),
    )


class PrivacyLedger(ABC):
    """Where ε is charged, composed and capped; one contract for every backend."""

    @abstractmethod
    def record(self, charge: Charge, *, actor: str = "fedguard", enforce: bool = True) -> bool:
        """Charge once, atomically; return False if this exact charge was already recorded.

        With ``enforce`` (the default: a reservation before release) a charge
        that would take the spend past the applicable cap raises
        :class:`PrivacyBudgetExceeded` and writes nothing. ``enforce=False``
        records a release that already happened, truthfully, even over cap.

        Raises
        ------
        PrivacyBudgetExceeded
            Over cap (with ``enforce``).
        LedgerConflictError
            The same key was recorded with different parameters.
        """

    def record_spent(self, charge: Charge, *, actor: str = "fedguard", enforce: bool = True) -> float:
        """:meth:`record`, then the ε spent on the charge's site, dataset and kind (what :meth:`spent` says).

        A backend may compose it in the recording transaction (:class:`privacy.ledger.sql.SqlLedger`
        does: a site's reply then costs one transaction and no second read).
        """
        self.record(charge, actor=actor, enforce=enforce)
        return self.spent(charge.site, charge.manifest, charge.kind)

    def record_reply(self, site: str, manifest: str, build: Callable[[list[Charge]], Sequence[Charge]], *,
                     actor: str = "fedguard", enforce: bool = True) -> dict[str, float]:
        """Record the charges ``build`` derives from this site's and manifest's charges so far; ε spent per kind.

        A site's reply is charged from what its ledger already holds (steps taken earlier in the run, a
        retried round). A backend may read and write in one transaction (:class:`privacy.ledger.sql.SqlLedger`
        does: no other writer comes between the read and the charges, and a charge refused over cap
        leaves the reply's other charges unwritten too, since nothing is released).
        """
        spent: dict[str, float] = {}
        for charge in build(self.charges(site, manifest)):
            spent[charge.kind] = self.record_spent(charge, actor=actor, enforce=enforce)
        return spent

    def record_released(self, charges: Sequence[Charge], *, actor: str = "fedguard") -> int:
        """Record releases that already happened (``enforce=False``), e.g. one round's sites; how many were new.

        Each charge is checked as :meth:`record` checks it; a backend may
        write them in one transaction (:class:`privacy.ledger.sql.SqlLedger`
        does: a round of a thousand sites is one commit, not a thousand).
        """
        return sum(self.record(charge, actor=actor, enforce=False) for charge in charges)

    @abstractmethod
    def charges(self, site: str | None = None, manifest: str | None = None, kind: str | None = None) -> list[Charge]:
        """Recorded charges, oldest first, optionally filtered."""

    @abstractmethod
    def caps(self) -> list[Cap]:
        """Every cap set."""

    @abstractmethod
    def set_cap(self, site: str, epsilon: float, delta: float, *, manifest: str = ANY, kind: str = ANY,
                accountant: str = "rdp", actor: str = "fedguard") -> Cap:
        """Create or replace the cap for (site, manifest, kind); ``*`` matches anything."""

    def cap_for(self, site: str, manifest: str, kind: str) -> Cap | None:
        return applicable_cap(self.caps(), site, manifest, kind)

    def project(self, site: str, manifest: str, kind: str,
                extra: GaussianHistory | Sequence[GaussianHistory] = ()) -> Projection:
        """ε composed over every recorded charge, and with ``extra`` added (nothing is written)."""
        extras = [extra] if isinstance(extra, GaussianHistory) else list(extra)
        charges = self.charges(site, manifest, kind)
        cap = self.cap_for(site, manifest, kind)
        spent, delta, _ = evaluate(charges, cap)
        projected, delta, _ = evaluate(charges, cap, extras) if extras else (spent, delta, "")
        return Projection(site, manifest, kind, spent, projected, delta, cap)

    def spent(self, site: str, manifest: str, kind: str) -> float:
        """ε spent so far (composed with the accountant, at the cap's δ)."""
        return self.project(site, manifest, kind).spent

    def remaining(self, site: str, manifest: str, kind: str) -> float:
        """The budget left, cap − spent (never negative); ``inf`` when no cap applies."""
        p = self.project(site, manifest, kind)
        return math.inf if p.cap is None else max(0.0, p.cap.epsilon - p.spent)

    def check(self, site: str, manifest: str, kind: str,
              extra: GaussianHistory | Sequence[GaussianHistory]) -> Projection:
        """:meth:`project`, raising :class:`PrivacyBudgetExceeded` when over cap."""
        projection = self.project(site, manifest, kind, extra)
        projection.raise_if_over()
        return projection

    def manifests(self, site: str) -> list[str]:
        """The site's manifests, most recently charged first."""
        seen: dict[str, None] = {}
        for c in reversed(self.charges(site)):
            seen.setdefault(c.manifest, None)
        return list(seen)

    def summary(self, site: str | None = None) -> list[LedgerSummary]:
        """One row per (site, manifest, kind) with charges, sorted."""
        groups: dict[tuple[str, str, str], list[Charge]] = {}
        for c in self.charges(site):
            groups.setdefault((c.site, c.manifest, c.kind), []).append(c)
        caps = self.caps()
        return [summarize(s, m, k, rows, applicable_cap(caps, s, m, k))
                for (s, m, k), rows in sorted(groups.items())]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (a no-op where there are none)."""
