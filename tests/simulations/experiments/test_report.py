"""Results table and report from trial records written here (no simulation): figures, captions, n/a trials."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from simulations.experiments.figures import accuracy_per_round, privacy_utility
from simulations.experiments.records import make_record, read_records, write_record, write_table
from simulations.experiments.report import write_markdown, write_report

COMMAND = "fedguard experiment run grid.toml --out results"


def _outcome(accuracy: float, epsilon: float, seed: int, attack: bool) -> dict[str, Any]:
    """An outcome shaped like simulations.federation.run's, with attack and audit sections."""
    outcome: dict[str, Any] = {
        "accuracy": accuracy, "baseline_accuracy": 0.95, "seconds": 12.0,
        "epsilon": {"site-0": epsilon * 0.99 or None, "site-1": epsilon * 0.98 or None},
        "site_epsilon": {"site-0": None, "site-1": None},
        "history": [{"round": 1, "accuracy": accuracy - 0.1, "loss": 0.5, "epsilon_max": epsilon / 2},
                    {"round": 2, "accuracy": accuracy, "loss": float("nan"), "epsilon_max": epsilon}],
        "privacy_audit": {"epsilon": epsilon, "epsilon_lower_bound": epsilon / 4 + seed * 0.01, "passed": True,
                          "roc": {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.6 + seed * 0.01, 1.0]}},
    }
    if attack:
        outcome["attack"] = {"name": "backdoor", "backdoor_success_rate": 0.3 + seed * 0.1, "attackers": 1}
    return outcome


def _records(attack: bool = True) -> list[dict[str, Any]]:
    records = []
    for epsilon, accuracies in ((0.0, (0.92, 0.94)), (1.0, (0.7, 0.9)), (3.0, (0.85, 0.87))):
        for seed, accuracy in zip((1, 2), accuracies, strict=True):
            settings = {"dp-epsilon": epsilon, "seed": seed, "sites": 3,
                        **({"attack": "backdoor", "attackers": 0.34} if attack else {})}
            config = {"dp_epsilon": epsilon, "seed": seed, "sites": 3, "site_epsilon": 0.0,
                      "aggregation": "fedavg", "secure_agg": "secagg+", "attack": settings.get("attack", "none")}
            records.append(make_record(f"t{epsilon}-{seed}", settings, "ok", config=config,
                                       outcome=_outcome(accuracy, epsilon, seed, attack), seconds=20.0))
    if attack:
        records.append(make_record("na-median", {"aggregation": "median", "secure-agg": "secagg+",
                                                 "attack": "backdoor", "attackers": 0.34, "seed": 1},
                                   "not-applicable", error="aggregation 'median' needs each site's update, "
                                   "which secure aggregation hides; use fedavg, or secure-aggregation none"))
    records.append(make_record("broken", {"sites": 50, "seed": 1}, "failed",
                               error="ConfigurationError: 455 examples cannot give 50 sites 10 examples each"))
    return records


def _write(out: Path, records: list[dict[str, Any]]) -> None:
    for record in records:
        write_record(out, record)
    (out / "sweep.json").write_text(json.dumps({"name": "fake", "command": COMMAND}))


def test_records_become_one_flat_row_each(tmp_path: Path) -> None:
    _write(tmp_path, _records())
    table = pq.read_table(write_table(tmp_path, read_records(tmp_path))).to_pylist()
    assert len(table) == 8
    by_id = {row["id"]: row for row in table}
    row = by_id["t1.0-2"]
    assert (row["status"], row["dp_epsilon"], row["seed"], row["final_accuracy"]) == ("ok", 1.0, 2, 0.9)
    assert row["record_epsilon_spent"] == 0.99 and row["site_epsilon_spent"] is None
    assert row["attack_backdoor_success_rate"] == 0.5 and row["audit_epsilon_lower_bound"] == 0.25 + 0.02
    assert by_id["broken"]["status"] == "failed" and "50 sites" in by_id["broken"]["error"]
    assert by_id["na-median"]["status"] == "not-applicable" and by_id["na-median"]["final_accuracy"] is None


def test_report_is_self_contained_with_every_figure_and_caption(tmp_path: Path) -> None:
    _write(tmp_path, _records())
    written = write_report(tmp_path, tmp_path / "report.html")
    names = sorted(p.name for p in written.figures)
    assert names == sorted(f"{n}.{ext}" for n in ("accuracy-per-round", "privacy-utility", "attacks", "mia-roc",
                                                   "epsilon-audit") for ext in ("svg", "png"))
    assert all(p.stat().st_size > 1000 for p in written.figures)
    page = written.html.read_text(encoding="utf-8")
    assert page.count("<svg") == 5 and "Not drawn" not in page
    assert not re.search(r"<(img|script|link|iframe)\b|\bsrc=|url\((?!#)", page)  # nothing loaded from elsewhere
    assert page.count("Rerun: <code>" + COMMAND) == 5
    assert "Mean ± sd over seeds [1, 2]" in page
    # ε = 1: accuracies 0.7 and 0.9 → mean 0.8, sample sd 0.141, never one seed's value
    assert "0.800 ± 0.141 (n=2)" in page
    assert "not applicable — aggregation &#x27;median&#x27; needs each site&#x27;s update" in page  # n/a shown
    assert "455 examples cannot give 50 sites" in page  # the failed trial is listed with its error


def test_markdown_table_gives_mean_and_sd_per_setting_with_the_reasons_for_trials_not_run(tmp_path: Path) -> None:
    _write(tmp_path, _records())
    text = write_markdown(tmp_path, tmp_path / "table.md").read_text(encoding="utf-8")
    assert f"Rerun: `{COMMAND}`" in text and "shared settings: " in text
    lines = [line for line in text.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[:7] == ["aggregation", "attack", "attackers", "dp-epsilon", "secure-agg", "site-epsilon", "sites"]
    assert "attack backdoor success rate" in head and "audit ε̂ (95 %)" in head
    rows = {tuple(c.strip() for c in line.strip("|").split("|"))[:7:3]: line for line in lines[2:]}
    # ε = 1: accuracies 0.7 and 0.9 → 0.800 ± 0.141 over seeds 1 and 2, never one seed's value
    assert "| 1,2 | 0.800 ± 0.141 | 0.990 ± 0.000 | 0.450 ± 0.071 |" in rows[("fedavg", "1.0", "3")]
    assert "not-applicable: aggregation 'median' needs each site's update" in rows[("median", "", "")]
    assert "failed: ConfigurationError: 455 examples" in rows[("", "", "50")]
    assert len(lines) == 2 + 5


def test_attack_lines_start_from_the_same_defence_with_every_site_honest() -> None:
    """Fraction 0 of each defence's line is its no-attack trial; a panel per attack; n/a named in the caption."""
    from simulations.experiments.figures import Drawn, attacks

    records = []
    for aggregation, honest, attacked in (("fedavg", 0.95, 0.6), ("median", 0.93, 0.9)):
        for attack, fraction, accuracy in (("none", 0.0, honest), ("sign-flipping", 0.3, attacked)):
            settings = {"attack": attack, "attackers": fraction, "aggregation": aggregation, "secure-agg": "none",
                        "seed": 1}
            records.append(make_record(f"{aggregation}-{attack}", settings, "ok", config={},
                                       outcome={"accuracy": accuracy, "history": []}, seconds=1.0))
    records.append(make_record("na", {"attack": "sign-flipping", "attackers": 0.3, "aggregation": "median",
                                      "secure-agg": "secagg+", "seed": 1}, "not-applicable",
                               error="aggregation 'median' needs each site's update"))
    drawn = attacks(records)
    assert isinstance(drawn, Drawn)
    top = drawn.figure.axes[0]
    assert top.get_title() == "sign-flipping"
    lines = sorted((tuple(line.get_xdata()), tuple(line.get_ydata())) for line in top.lines
                   if line.get_marker() == "o")
    assert lines == [((0.0, 0.3), (0.93, 0.9)), ((0.0, 0.3), (0.95, 0.6))]
    assert "secagg+ · median: not applicable — aggregation 'median' needs each site's update" in drawn.note


def test_figures_missing_data_are_skipped_with_a_note(tmp_path: Path) -> None:
    records = _records(attack=False)
    for record in records:
        record["privacy_audit"] = None
    _write(tmp_path, records)
    page = write_report(tmp_path, tmp_path / "out" / "report.html").html.read_text(encoding="utf-8")
    assert page.count("<svg") == 2
    assert "Not drawn: no trial ran an attack" in page
    assert "Not drawn: no trial recorded membership-inference ROC points" in page
    assert "Not drawn: no trial recorded an audit ε̂" in page


def test_privacy_utility_curves_per_dp_kind_and_round_bands() -> None:
    records = [r for r in _records(attack=False) if r["status"] == "ok"]
    drawn = privacy_utility(records)
    labels = [t.get_text() for t in drawn.figure.axes[0].get_legend().get_texts()]  # type: ignore[union-attr]
    assert sorted(labels) == ["no DP", "record-level DP"]
    rounds = accuracy_per_round(records)
    lines = rounds.figure.axes[0].get_lines()  # type: ignore[union-attr]
    assert len(lines) == 3  # one per ε, seeds averaged
    assert list(lines[1].get_ydata()) == pytest.approx([0.7, 0.8])  # ε = 1: rounds 1 and 2, mean over the two seeds


PROBE = """
import json, sys
from fedguard.cli import main
sys.argv = ["fedguard", "experiment", "report", sys.argv[1]]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
print(json.dumps([m for m in ("torch", "flwr", "ray", "opacus", "sklearn") if m in sys.modules]), file=sys.stderr)
"""


def test_report_command_imports_no_training_engine(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    _write(tmp_path, _records())
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stderr.strip().splitlines()[-1]) == []
    assert (tmp_path / "report.html").exists() and "5 figures" in result.stdout
