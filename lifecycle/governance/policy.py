"""A model's promotion policy: a flat TOML document parsed into a frozen :class:`Policy`.

The format (DESIGN.md §7.10: flat TOML, hyphenated keys), one document per
model, one table per stage::

    sensitive-attribute = "mean radius"   # model-wide: the feature whose groups fairness compares
    on-taint = "block"                    # or "replace": production's answer when its version gets tainted
    approvers = ["3f1c…64 hex…"]          # optional: the only approver keys (SHA-256 fingerprints) that count
    [staging]
    min-accuracy = 0.90
    consent-clean = true
    [production]
    max-record-epsilon = 3.0
    required-approvals = 2

Parsing is strict because governance is enforced, not advised (DESIGN.md §5):
an unknown key, stage or criterion, a wrong type or a value out of range is a
:class:`~lifecycle.errors.ConfigurationError` naming the key, the file and
the known keys, never a criterion that silently passes. A boolean criterion
set to ``false`` means "not required" and is not evaluated.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any

from lifecycle.errors import ConfigurationError
from lifecycle.governance.criteria import CRITERIA, FAIRNESS, STAGE_SETTINGS
from lifecycle.governance.decisions import STAGES

ON_TAINT = ("block", "replace")
"""What production does when its version is tainted: answer 503 (``block``) or serve the newest clean version."""
TOP_LEVEL = ("sensitive-attribute", "on-taint", "approvers")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")

DEFAULT_DOCUMENT = """\
# fedguard's built-in policy, in force until 'fedguard policy set' declares one
on-taint = "block"
[staging]
signature-verified = true
consent-clean = true
[production]
signature-verified = true
consent-clean = true
"""


@dataclass(frozen=True)
class Policy:
    """A parsed, validated policy (a value: two equal documents give equal policies).

    Attributes
    ----------
    stages
        Per declared stage, its ``(criterion, threshold)`` pairs in :data:`CRITERIA` order
        (boolean criteria set to ``false`` left out).
    approvals
        Per stage, ``required-approvals`` where declared.
    sensitive_attribute
        The feature whose groups the fairness criteria compare (``None``: none declared).
    on_taint
        ``"block"`` or ``"replace"``.
    digest
        SHA-256 of the document, as stored.
    version
        The registry's policy version (``None``: the built-in default policy).
    approvers
        The SHA-256 fingerprints (hex) of the only approver keys whose approvals and overrides count
        (empty: any valid approver key counts, which ``models promote|approve`` warn about).
    """

    stages: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]
    approvals: tuple[tuple[str, int], ...] = ()
    sensitive_attribute: str | None = None
    on_taint: str = "block"
    digest: str = ""
    version: int | None = None
    approvers: tuple[str, ...] = ()

    def allows(self, fingerprint: str) -> bool:
        """Whether an approval or override signed by the key ``fingerprint`` counts under this policy."""
        return not self.approvers or fingerprint in self.approvers

    def criteria(self, stage: str) -> tuple[tuple[str, Any], ...]:
        """The ``(criterion, threshold)`` pairs a version must meet to enter ``stage`` (empty if none)."""
        if stage not in STAGES:
            raise ConfigurationError(f"unknown stage '{stage}'; known stages: {', '.join(STAGES)}")
        return dict(self.stages).get(stage, ())

    def required_approvals(self, stage: str) -> int:
        """Signed approvals a move to ``stage`` needs (0 unless the policy says ``required-approvals``)."""
        if stage not in STAGES:
            raise ConfigurationError(f"unknown stage '{stage}'; known stages: {', '.join(STAGES)}")
        return dict(self.approvals).get(stage, 0)

    @property
    def declared_stages(self) -> tuple[str, ...]:
        """The stages that have criteria, in promotion order."""
        return tuple(stage for stage, criteria in self.stages if criteria)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``fedguard policy show --json``, the ML-BOM's governance summary)."""
        approvals = dict(self.approvals)
        return {
            "version": self.version, "digest": self.digest, "sensitive_attribute": self.sensitive_attribute,
            "on_taint": self.on_taint, "approvers": list(self.approvers),
            "stages": {stage: {**dict(criteria), **({"required-approvals": approvals[stage]}
                                                    if stage in approvals else {})}
                       for stage, criteria in self.stages},
        }


def digest(document: str) -> str:
    """SHA-256 of a policy document (UTF-8), what the registry and the ML-BOM record."""
    return hashlib.sha256(document.encode()).hexdigest()


def _unknown(what: str, key: str, place: str, known: list[str]) -> ConfigurationError:
    close = get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigurationError(f"unknown {what} '{key}' in {place}{hint}; known: {', '.join(known)}")


def _stage(stage: str, table: Any, source: str) -> tuple[tuple[tuple[str, Any], ...], int | None]:
    if not isinstance(table, dict):
        raise ConfigurationError(f"'{stage}' in {source} must be a table ([{stage}]) of criteria")
    known = [*CRITERIA, *STAGE_SETTINGS]
    parsed: dict[str, Any] = {}
    for key, value in table.items():
        parse = CRITERIA[key].parse if key in CRITERIA else STAGE_SETTINGS.get(key)
        if parse is None:
            raise _unknown("criterion", key, f"[{stage}] of {source}", known)
        try:
            parsed[key] = parse(value)
        except ValueError as exc:
            raise ConfigurationError(f"[{stage}] {key} = {value!r} in {source} must be {exc}; "
                                     f"known keys: {', '.join(known)}") from None
    criteria = tuple((key, parsed[key]) for key in CRITERIA
                     if key in parsed and not (CRITERIA[key].flag and parsed[key] is False))
    approvals = parsed.get("required-approvals")
    return criteria, approvals


def parse_policy(document: str, *, source: str = "the policy", version: int | None = None) -> Policy:
    """Parse and validate a policy document.

    Raises
    ------
    ConfigurationError
        Malformed TOML, an unknown key, stage or criterion, a wrong type or a value out of range
        (one line naming the key, ``source`` and the known keys).
    """
    try:
        data = tomllib.loads(document)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{source} is not valid TOML ({exc}); see docs/governance.md for the format") from None
    known_top = [*TOP_LEVEL, *(f"[{s}]" for s in STAGES)]
    stages: list[tuple[str, tuple[tuple[str, Any], ...]]] = []
    approvals: list[tuple[str, int]] = []
    for key, value in data.items():
        if key in STAGES:
            continue
        if key not in TOP_LEVEL:
            raise _unknown("key" if not isinstance(value, dict) else "stage", key, source, known_top)
    for stage in STAGES:
        if stage in data:
            criteria, required = _stage(stage, data[stage], source)
            stages.append((stage, criteria))
            if required is not None:
                approvals.append((stage, required))
    attribute = data.get("sensitive-attribute")
    if attribute is not None and (not isinstance(attribute, str) or not attribute.strip()):
        raise ConfigurationError(f"sensitive-attribute = {attribute!r} in {source} must be a feature name "
                                 f"(a non-empty string); known keys: {', '.join(known_top)}")
    on_taint = data.get("on-taint", "block")
    if on_taint not in ON_TAINT:
        raise ConfigurationError(f"on-taint = {on_taint!r} in {source} must be one of {', '.join(ON_TAINT)}; "
                                 f"known keys: {', '.join(known_top)}")
    approvers = _approvers(data.get("approvers", []), source, known_top)
    for stage, criteria in stages:
        needs = [key for key, _ in criteria if key in FAIRNESS]
        if needs and attribute is None:
            raise ConfigurationError(f"[{stage}] {needs[0]} in {source} needs a top-level sensitive-attribute "
                                     "(the feature whose groups are compared); known keys: " + ", ".join(known_top))
    return Policy(tuple(stages), tuple(approvals), attribute, str(on_taint), digest(document), version, approvers)


def _approvers(value: Any, source: str, known: list[str]) -> tuple[str, ...]:
    """The ``approvers`` list: distinct SHA-256 key fingerprints, 64 hex digits each (as ``operator show`` prints)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"approvers = {value!r} in {source} must be a list of approver key fingerprints "
                                 f"(64 hex digits, from 'fedguard operator show'); known keys: {', '.join(known)}")
    fingerprints = tuple(dict.fromkeys(v.strip().lower() for v in value))
    for fingerprint in fingerprints:
        if not _FINGERPRINT.fullmatch(fingerprint):
            raise ConfigurationError(f"approvers entry {fingerprint[:80]!r} in {source} is not a SHA-256 key "
                                     "fingerprint (64 hex digits, from 'fedguard operator show'); known keys: "
                                     + ", ".join(known))
    return fingerprints


DEFAULT_POLICY = parse_policy(DEFAULT_DOCUMENT, source="the built-in default policy")
"""In force for a model without a declared policy: signature verified and consent clean for staging and production."""
