"""One audited simulation: the canaries' ε̂ is signed into the model's metrics and the governance gate reads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lifecycle.bom import read_bom, read_lineage
from lifecycle.governance.criteria import CRITERIA, Facts
from lifecycle.registry import Registry
from simulations.federation import SimulationConfig, run
from simulations.membership import loss_attack, membership_section

pytestmark = pytest.mark.slow  # one federation, ~30 s here


def test_simulate_with_canaries_signs_a_passing_audit(fedguard_home: Path, shared_ray: str) -> None:
    events: list[tuple[str, Any]] = []
    cfg = SimulationConfig(sites=3, rounds=2, local_epochs=1, watermark="none", secure_agg="none", canaries=60,
                           dp_epsilon=1.0, model_name="audited")
    outcome = run(cfg, lambda event, payload: events.append((event, payload)))
    section = outcome["privacy_audit"]
    ledger_eps = max(outcome["epsilon"].values())
    assert section["canaries"] == 60 and section["epsilon"] == pytest.approx(ledger_eps)
    assert section["epsilon_lower_bound"] <= section["epsilon"] and section["passed"] is True
    assert 0 < section["guesses"] <= 60 and 0 <= section["correct"] <= section["guesses"]

    record = Registry.open().get_version("audited", outcome["version"])
    signed = read_lineage(read_bom(Path(outcome["artifact"])))["metrics"]["privacy_audit"]
    assert record.metrics["privacy_audit"] == signed == section  # registry = signed BOM = outcome
    gate = CRITERIA["privacy-audit-passed"].measure(Facts(metrics=record.metrics, watermark=record.watermark), True)
    assert gate.passed, gate.evidence
    saved = json.loads((Path(outcome["run_dir"]) / "outcome.json").read_text())["config"]
    assert saved["canaries"] == 60  # 'fedguard audit privacy' and 'retrain' re-run it with its canaries

    attack = loss_attack(Path(outcome["artifact"]), Path(outcome["run_dir"]) / "data")
    assert attack.members + attack.non_members == 569 and 0 <= attack.auc <= 1
    section = membership_section(Path(outcome["artifact"]), Path(outcome["run_dir"]) / "data", points=11)
    assert section["auc"] == attack.auc  # the experiment's section is the same attack, with its curve
    fpr, tpr = section["roc"]["fpr"], section["roc"]["tpr"]
    assert len(fpr) == len(tpr) <= 11 and fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0
    assert fpr == sorted(fpr) and tpr == sorted(tpr)
