"""The criteria a promotion policy may declare: one registry entry each, with its parser and its measure.

A policy key that is not in :data:`CRITERIA` (or in :data:`STAGE_SETTINGS`)
is refused when the policy is parsed, so a misspelt criterion can never pass
silently (DESIGN.md §5, §7.4: pluggable mechanisms through a small registry,
as Opacus registers its accountants). Each :class:`Criterion` says how its
threshold is read from the TOML document (``parse``) and how it is measured
on a version (``measure``), from :class:`Facts`: what the registry and the
signed ML-BOM say about the version (or, before registration, what the
publication is about to sign).

Every measure returns a :class:`~lifecycle.governance.decisions.CriterionResult`;
a value that cannot be measured fails, with ``measured = None`` and evidence
saying why (never a pass by default).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lifecycle.governance.decisions import CriterionResult


class SiteFacts(Protocol):
    """One site's registry row (:class:`lifecycle.registry.SiteRecord` has these attributes)."""

    @property
    def site(self) -> str: ...
    @property
    def epsilon(self) -> float | None: ...


@dataclass(frozen=True)
class Facts:
    """What is known about one version when its gates are measured.

    Attributes
    ----------
    metrics, watermark
        The version's metrics and watermark outcome (registry rows, equal to the signed BOM's).
    sites
        The registry's site rows (record-level ε per site).
    signed_epsilon
        Each site's record-level ε as signed into the ML-BOM (``None``: not known, e.g. before signing).
    training
        The signed BOM's training section (site-level ε per site), or the one about to be signed.
    withdrawals
        Consent withdrawals that taint the version (``#id`` and site), ``None`` when unknown.
    signature
        ``(verified, evidence)`` of the OpenSSF model signature, ``None`` before the model is signed.
    sensitive_attribute
        The policy's sensitive attribute (what the fairness measurement must be about).
    """

    metrics: Mapping[str, Any]
    watermark: Mapping[str, Any]
    sites: Sequence[SiteFacts] = ()
    signed_epsilon: Mapping[str, float | None] | None = None
    training: Mapping[str, Any] | None = None
    withdrawals: Sequence[str] | None = None
    signature: tuple[bool, str] | None = None
    sensitive_attribute: str | None = None
    problems: Mapping[str, str] = field(default_factory=dict)
    """Why a source could not be read (``"bom"``: the signed BOM), for the evidence of what depends on it."""


@dataclass(frozen=True)
class Criterion:
    """One declarable criterion.

    Attributes
    ----------
    key
        The policy key (``min-accuracy``).
    what
        What it measures and where from, in a line (``fedguard policy show``, the docs).
    parse
        Threshold from the TOML value; raises ``ValueError`` naming what is accepted.
    measure
        The result on ``Facts`` against the parsed threshold.
    flag
        A boolean criterion: ``false`` means "not required" and is not evaluated.
    """

    key: str
    what: str
    parse: Callable[[Any], Any]
    measure: Callable[[Facts, Any], CriterionResult]
    flag: bool = False


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(what)
    return float(value)


def fraction(value: Any) -> float:
    """A number in [0, 1] (accuracies and fairness gaps)."""
    number = _number(value, "a number between 0 and 1")
    if not 0.0 <= number <= 1.0:
        raise ValueError("a number between 0 and 1")
    return number


def positive(value: Any) -> float:
    """A finite number > 0 (ε)."""
    number = _number(value, "a finite number above 0")
    if number <= 0:
        raise ValueError("a finite number above 0")
    return number


def non_negative(value: Any) -> float:
    """A finite number >= 0 (drift)."""
    number = _number(value, "a finite number of at least 0")
    if number < 0:
        raise ValueError("a finite number of at least 0")
    return number


def flag(value: Any) -> bool:
    """``true`` (required) or ``false`` (not required)."""
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def count(value: Any) -> int:
    """A whole number from 0 to 20 (approvals)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 20:
        raise ValueError("a whole number from 0 to 20")
    return value


def _real(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` when it is not one (a missing or non-numeric metric)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _unmeasured(key: str, threshold: Any, why: str) -> CriterionResult:
    return CriterionResult(key, False, None, threshold, why)


def _accuracy(facts: Facts, threshold: float) -> CriterionResult:
    accuracy = _real(facts.metrics.get("accuracy"))
    if accuracy is None:
        return _unmeasured("min-accuracy", threshold, "no test accuracy recorded in the version's metrics")
    examples = facts.metrics.get("test_examples")
    where = f" on {examples} held-out records" if examples is not None else ""
    return CriterionResult("min-accuracy", accuracy >= threshold, accuracy, threshold,
                           f"metrics.accuracy{where} (the coordinator's held-out set, signed in the ML-BOM)")


def _worst(key: str, threshold: float, values: Mapping[str, float | None], source: str) -> CriterionResult:
    """The largest ε over sites; a site without one (no DP: unbounded ε) fails the criterion."""
    if not values:
        return _unmeasured(key, threshold, f"no site is recorded in {source}")
    missing = sorted(site for site, eps in values.items() if eps is None)
    if missing:
        return _unmeasured(key, threshold, f"site(s) {', '.join(missing)} have no ε in {source} "
                                           "(trained without this kind of DP: the ε is unbounded)")
    site, worst = max(((s, float(e)) for s, e in values.items() if e is not None), key=lambda item: item[1])
    return CriterionResult(key, worst <= threshold, worst, threshold,
                           f"worst site '{site}' of {len(values)} ({source})")


def _record_epsilon(facts: Facts, threshold: float) -> CriterionResult:
    registry = {s.site: s.epsilon for s in facts.sites}
    key = "max-record-epsilon"
    if facts.signed_epsilon is not None:
        for site in sorted(set(registry) | set(facts.signed_epsilon)):
            ours, signed = registry.get(site), facts.signed_epsilon.get(site)
            if site not in registry or site not in facts.signed_epsilon or (
                    ours != signed and not (ours is not None and signed is not None and math.isclose(ours, signed))):
                return _unmeasured(key, threshold, f"the registry says ε={ours!r} for site '{site}' but the signed "
                                                   f"ML-BOM says {signed!r}: run 'fedguard models verify'")
    source = "registry rows, equal to the signed ML-BOM" if facts.signed_epsilon is not None else "the lineage"
    return _worst(key, threshold, registry, f"record-level DP-SGD ε per site, {source}")


def _site_epsilon(facts: Facts, threshold: float) -> CriterionResult:
    key = "max-site-epsilon"
    if facts.training is None:
        return _unmeasured(key, threshold, "the signed ML-BOM could not be read"
                           + (f" ({facts.problems['bom']})" if "bom" in facts.problems else ""))
    sites = facts.training.get("sites", [])
    values = {str(s.get("site")): _real((s.get("site_dp") or {}).get("epsilon")) for s in sites}
    if values and all(v is None for v in values.values()):
        return _unmeasured(key, threshold, "the run used no site-level DP (the ML-BOM's training.sites[].site_dp "
                                           "is empty): retrain with --site-epsilon")
    return _worst(key, threshold, values, "site-level DP ε per site, ML-BOM training.sites[].site_dp.epsilon")


def _signature(facts: Facts, threshold: bool) -> CriterionResult:
    if facts.signature is None:
        return _unmeasured("signature-verified", threshold, "not signed yet (evaluated right after registration)")
    verified, evidence = facts.signature
    return CriterionResult("signature-verified", verified, verified, threshold, evidence)


def _watermark(facts: Facts, threshold: bool) -> CriterionResult:
    mark = facts.watermark
    scheme = mark.get("scheme")
    if not scheme or scheme == "none":
        return CriterionResult("watermark-verified", False, False, threshold,
                               "published without a watermark (watermark scheme: none)")
    verified = mark.get("verified")
    if not isinstance(verified, bool):
        return _unmeasured("watermark-verified", threshold, f"no verification of the {scheme} watermark recorded")
    detail = (f"{scheme} watermark {'detected' if verified else 'NOT detected'} on the published weights: trigger "
              f"accuracy {mark.get('trigger_accuracy')}, p-value {mark.get('p_value')}, commitment "
              f"{str(mark.get('commitment', ''))[:16]}")
    return CriterionResult("watermark-verified", verified, verified, threshold, detail)


def _fairness(key: str, field_name: str) -> Callable[[Facts, float], CriterionResult]:
    def measure(facts: Facts, threshold: float) -> CriterionResult:
        section = facts.metrics.get("fairness")
        if not isinstance(section, Mapping):
            return _unmeasured(key, threshold, "no fairness measurement recorded for this version (the held-out set "
                               f"has no feature '{facts.sensitive_attribute}', or the model was published before "
                               "the policy named it): retrain or re-publish under this policy")
        measured_on = section.get("attribute")
        if measured_on != facts.sensitive_attribute:
            return _unmeasured(key, threshold, f"fairness was measured on '{measured_on}', but the policy's sensitive "
                                               f"attribute is '{facts.sensitive_attribute}': retrain or re-publish "
                                               "under the new policy")
        value = _real(section.get(field_name))
        if value is None:
            return _unmeasured(key, threshold, f"metrics.fairness.{field_name} is missing or not a number")
        return CriterionResult(key, value <= threshold, value, threshold,
                               f"fairlearn {field_name.replace('_', ' ')} on the held-out set, groups of "
                               f"'{measured_on}' ({section.get('grouping')}), {section.get('examples')} records")
    return measure


def _drift(facts: Facts, threshold: float) -> CriterionResult:
    section = facts.metrics.get("drift")
    if not isinstance(section, Mapping):
        return _unmeasured("max-drift", threshold, "no drift measurement recorded: the model was published without "
                                                   "reference statistics in its ML-BOM")
    value = _real(section.get("max"))
    if value is None:
        return _unmeasured("max-drift", threshold, "metrics.drift.max is missing or not a number")
    return CriterionResult("max-drift", value <= threshold, value, threshold,
                           f"largest {section.get('statistic', 'psi')} of the held-out set against the ML-BOM's "
                           f"reference histograms, on feature '{section.get('feature')}'")


def _consent(facts: Facts, threshold: bool) -> CriterionResult:
    if facts.withdrawals is None:
        return _unmeasured("consent-clean", threshold, "consent withdrawals could not be read")
    if facts.withdrawals:
        return CriterionResult("consent-clean", False, False, threshold,
                               "tainted by consent withdrawal(s) " + ", ".join(facts.withdrawals))
    return CriterionResult("consent-clean", True, True, threshold,
                           "no consent withdrawal covers this version's lineage")


def _privacy_audit(facts: Facts, threshold: bool) -> CriterionResult:
    section = facts.metrics.get("privacy_audit")
    if not isinstance(section, Mapping) or not isinstance(section.get("passed"), bool):
        return _unmeasured("privacy-audit-passed", threshold, "no privacy audit recorded for this version")
    passed = bool(section["passed"])
    return CriterionResult("privacy-audit-passed", passed, passed, threshold,
                           f"empirical ε lower bound {section.get('epsilon_lower_bound')} against the claimed "
                           f"ε {section.get('epsilon')}")


CRITERIA: dict[str, Criterion] = {c.key: c for c in (
    Criterion("min-accuracy", "test accuracy on the coordinator's held-out set (metrics.accuracy)",
              fraction, _accuracy),
    Criterion("max-record-epsilon", "record-level DP-SGD ε of the worst site (registry, checked against the BOM)",
              positive, _record_epsilon),
    Criterion("max-site-epsilon", "site-level DP ε of the worst site (BOM training.sites[].site_dp.epsilon)",
              positive, _site_epsilon),
    Criterion("signature-verified", "the OpenSSF model signature verifies against the registry's key",
              flag, _signature, flag=True),
    Criterion("watermark-verified", "the watermark was detected on the published weights (watermark.verified)",
              flag, _watermark, flag=True),
    Criterion("max-demographic-parity-difference",
              "fairlearn demographic-parity difference on the sensitive attribute (metrics.fairness)",
              fraction, _fairness("max-demographic-parity-difference", "demographic_parity_difference")),
    Criterion("max-equalized-odds-difference",
              "fairlearn equalized-odds difference on the sensitive attribute (metrics.fairness)",
              fraction, _fairness("max-equalized-odds-difference", "equalized_odds_difference")),
    Criterion("max-drift", "largest PSI of the held-out set against the BOM's reference histograms (metrics.drift)",
              non_negative, _drift),
    Criterion("consent-clean", "no consent withdrawal taints the version's lineage", flag, _consent, flag=True),
    Criterion("privacy-audit-passed", "the version's privacy audit passed (metrics.privacy_audit.passed)",
              flag, _privacy_audit, flag=True),
)}
"""Every measurable criterion, in the order reports list them."""

STAGE_SETTINGS: dict[str, Callable[[Any], Any]] = {"required-approvals": count}
"""Stage keys that are not measured (read by the promotion work): ``required-approvals``."""

FAIRNESS = ("max-demographic-parity-difference", "max-equalized-odds-difference")
"""The criteria that need the policy's ``sensitive-attribute``."""


def measure(facts: Facts, criteria: Sequence[tuple[str, Any]]) -> tuple[CriterionResult, ...]:
    """Measure every ``(criterion, threshold)`` pair on ``facts``."""
    return tuple(CRITERIA[key].measure(facts, threshold) for key, threshold in criteria)
