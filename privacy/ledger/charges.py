"""The privacy charge of one round, computed by one function that both sides call.

A site's reply carries a *DP report*: who pays (site, dataset manifest) and
which mechanisms ran — record-level DP-SGD (σ, q, the steps taken so far in
this run, δ, accountant) and, under site-level DP, the site's share of the
distributed Gaussian mechanism (:mod:`privacy.site_dp`). The site's veto
(:func:`privacy.ledger.guard.make_ledger_mod`) charges its own ledger from it
before the reply leaves; the coordinator's ledger
(:class:`coordinator.ledger.RunLedger`) charges the registry's ledger from it
after the round is aggregated. Both call :func:`round_charges`, so the two
ledgers cannot drift apart by computing the same quantity twice.

The report's fields travel inside the reply's ``site`` record
(:class:`federation.protocol.SiteReply` composes them); their keys are
defined here, because this package reads them on the site before anything
else does, and ``privacy`` may not import ``federation``.

Notes
-----
Record-level: each round's new DP-SGD steps are one more run of the
subsampled Gaussian mechanism (Abadi et al. 2016; accounted with RDP,
Mironov 2017). Site-level: one step of the subsampled Gaussian per
aggregated round at the coordinator (McMahan et al. 2018); at the site
either the declared plan once (trusting the coordinator's sampling) or one
un-amplified step per round taken part in (see :mod:`privacy.ledger.guard`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lifecycle.errors import ConfigurationError
from privacy.accountants import ACCOUNTANTS, GaussianHistory
from privacy.ledger.base import Charge
from privacy.site_dp import SiteDPInstructions

NAME = "name"
MANIFEST = "manifest"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
STEPS = "steps"
DELTA = "delta"
ACCOUNTANT = "accountant"
LEDGER_EPSILON = "ledger-epsilon-"
"""Prefix of the ε the site's own ledger has composed so far, per DP kind (``ledger-epsilon-record``)."""
DEFAULT_ACCOUNTANT = "rdp"
DEFAULT_SITE_DELTA = 1e-5
SITE_SAMPLING = ("declared", "participation", "aggregated")
"""How a site-level step is charged: the declared plan once (site), one q = 1 step per round taken
part in (site), one step at the plan's q per aggregated round (coordinator)."""


class ReportError(ConfigurationError):
    """A reply's DP report is malformed: the round cannot be charged, so it must not be released."""


def _number(fields: Mapping[str, Any], key: str) -> float:
    value = fields.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ReportError(f"the site record's '{key}' is {value!r}, not a finite number; "
                          "site and coordinator versions differ or the reply was altered")
    return float(value)


def _text(fields: Mapping[str, Any], key: str, default: str) -> str:
    value = fields.get(key, default)
    if not isinstance(value, str):
        raise ReportError(f"the site record's '{key}' is {value!r}, not text")
    return value


@dataclass(frozen=True)
class RecordLevelReport:
    """DP-SGD as a site ran it in this run: σ, q, steps (cumulative, or per round in a plan), δ."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str = DEFAULT_ACCOUNTANT

    def history(self, steps: int | None = None) -> GaussianHistory:
        """The accountant's view after ``steps`` (default: the reported steps)."""
        return GaussianHistory(self.noise_multiplier, self.sample_rate, self.steps if steps is None else steps,
                               self.delta, self.accountant)

    def to_fields(self, steps_key: str = STEPS) -> dict[str, float | int | str]:
        return {NOISE_MULTIPLIER: self.noise_multiplier, SAMPLE_RATE: self.sample_rate, steps_key: self.steps,
                DELTA: self.delta, ACCOUNTANT: self.accountant}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], steps_key: str = STEPS) -> RecordLevelReport | None:
        """The report in ``fields``; None when the site ran no DP-SGD (no σ or no steps)."""
        if NOISE_MULTIPLIER not in fields or steps_key not in fields:
            return None
        accountant = _text(fields, ACCOUNTANT, DEFAULT_ACCOUNTANT)
        if accountant not in ACCOUNTANTS:
            raise ReportError(f"the site record's '{ACCOUNTANT}' is '{accountant}'; expected one of {ACCOUNTANTS}")
        steps = _number(fields, steps_key)
        if steps != int(steps) or steps < 0:
            raise ReportError(f"the site record's '{steps_key}' is {steps!r}, not a step count")
        return cls(_number(fields, NOISE_MULTIPLIER), _number(fields, SAMPLE_RATE), int(steps),
                   _number(fields, DELTA), accountant)


@dataclass(frozen=True)
class SiteLevelReport:
    """The site-level Gaussian mechanism behind a reply (σ, q when declared, δ, accountant)."""

    noise_multiplier: float
    sample_rate: float | None
    delta: float = DEFAULT_SITE_DELTA
    accountant: str = DEFAULT_ACCOUNTANT

    @classmethod
    def from_instructions(cls, applied: SiteDPInstructions | None) -> SiteLevelReport | None:
        """From what ``site_dp_mod`` applied; None without site-level DP or without a declared σ."""
        if applied is None or applied.noise_multiplier is None:
            return None
        return cls(applied.noise_multiplier, applied.sample_rate,
                   DEFAULT_SITE_DELTA if applied.delta is None else applied.delta, applied.accountant)


@dataclass(frozen=True)
class DPReport:
    """Who pays for a reply, on which dataset, and for which mechanisms."""

    site: str
    manifest: str
    record: RecordLevelReport | None = None
    site_level: SiteLevelReport | None = None

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> DPReport | None:
        """The report of a ``site`` record; None when it names no site and manifest.

        Raises
        ------
        ReportError
            A DP field is present but malformed (the reply must not be charged as if it ran no DP).
        """
        site, manifest = fields.get(NAME), fields.get(MANIFEST)
        if not isinstance(site, str) or not isinstance(manifest, str) or not site or not manifest:
            return None
        try:
            applied = SiteDPInstructions.from_site_fields(fields)
        except ConfigurationError as exc:
            raise ReportError(f"the site record's site-level DP fields are malformed: {exc}") from exc
        return cls(site, manifest, RecordLevelReport.from_fields(fields), SiteLevelReport.from_instructions(applied))


def round_charges(report: DPReport, *, run_id: str, server_round: int, record_steps_before: int,
                  site_sampling: str, planned_rounds: int = 0) -> list[Charge]:
    """The ledger charges one round's reply incurs (record level, then site level).

    ``record_steps_before`` is how many DP-SGD steps of this run were charged
    already (the report's steps are cumulative); ``site_sampling`` is one of
    :data:`SITE_SAMPLING`; ``planned_rounds`` is the declared plan's T
    (``declared`` only).

    Raises
    ------
    ConfigurationError
        ``declared`` without planned rounds or sample rate, or an unknown ``site_sampling``.
    """
    if site_sampling not in SITE_SAMPLING:
        raise ConfigurationError(f"site_sampling must be one of {SITE_SAMPLING}, got '{site_sampling}'")
    charges = []
    record = report.record
    if record is not None and record.steps - record_steps_before > 0:
        charges.append(Charge(report.site, report.manifest, run_id, server_round, "record", record.noise_multiplier,
                              record.sample_rate, record.steps - record_steps_before, record.delta,
                              record.accountant))
    level = report.site_level
    if level is not None:
        charges.append(_site_charge(report, level, run_id, server_round, site_sampling, planned_rounds))
    return charges


def _site_charge(report: DPReport, level: SiteLevelReport, run_id: str, server_round: int, site_sampling: str,
                 planned_rounds: int) -> Charge:
    if site_sampling == "participation":
        return Charge(report.site, report.manifest, run_id, server_round, "site", level.noise_multiplier, 1.0, 1,
                      level.delta, level.accountant)
    if level.sample_rate is None:
        raise ConfigurationError("the site-level DP report declares no sample rate; cannot charge the round")
    if site_sampling == "aggregated":
        return Charge(report.site, report.manifest, run_id, server_round, "site", level.noise_multiplier,
                      level.sample_rate, 1, level.delta, level.accountant)
    if planned_rounds < 1:
        raise ConfigurationError("'site-dp' declares no planned rounds; cannot charge the run")
    return Charge(report.site, report.manifest, run_id, 0, "site", level.noise_multiplier, level.sample_rate,
                  planned_rounds, level.delta, level.accountant)
