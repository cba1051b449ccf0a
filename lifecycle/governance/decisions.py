"""Gate decisions as values: what each criterion measured, against which threshold, and why.

A :class:`GateReport` is what ``fedguard models gates`` prints, what a refused
promotion names, what the ML-BOM summarises and what ``audit trace`` walks
back; it is stored whole as a :class:`~lifecycle.governance.tables.GateDecision`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

REGISTERED = "registered"
STAGING = "staging"
PRODUCTION = "production"
STAGES: tuple[str, ...] = (REGISTERED, STAGING, PRODUCTION)
"""A version's stages in an environment, in promotion order."""


@dataclass(frozen=True)
class CriterionResult:
    """One criterion of a policy, measured on one version."""

    criterion: str
    """The policy key (``min-accuracy``, ``consent-clean``, ...)."""
    passed: bool
    measured: Any
    """The measured value (a number, a boolean, or ``None`` when it could not be measured: then ``passed`` is false)."""
    threshold: Any
    evidence: str
    """Where the value comes from, in words a reviewer can check (the BOM field, a digest, a withdrawal id)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CriterionResult:
        return cls(str(data["criterion"]), bool(data["passed"]), data.get("measured"), data.get("threshold"),
                   str(data.get("evidence", "")))


@dataclass(frozen=True)
class GateReport:
    """Every criterion of one stage's policy, evaluated on one version."""

    model: str
    version: int
    stage: str
    environment: str = ""
    policy_version: int | None = None
    """The registry's policy version the criteria came from (``None``: the built-in default policy)."""
    results: tuple[CriterionResult, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failing(self) -> tuple[CriterionResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    def describe_failures(self) -> str:
        """One line naming every failing criterion with its measured value and threshold."""
        return "; ".join(f"{r.criterion} (measured {r.measured!r}, threshold {r.threshold!r})" for r in self.failing)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "stage": self.stage, "environment": self.environment,
            "policy_version": self.policy_version, "passed": self.passed,
            "results": [r.to_dict() for r in self.results],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateReport:
        return cls(str(data["model"]), int(data["version"]), str(data["stage"]), str(data.get("environment", "")),
                   data.get("policy_version"), tuple(CriterionResult.from_dict(r) for r in data.get("results", [])))
