"""Privacy across runs: both ε kinds in JSON/BOM/CLI, ledger composition, and caps that leave a site out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lifecycle.bom import read_bom, read_lineage
from tests.e2e.conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.integration,
              pytest.mark.usefixtures("shared_ray")]  # one Ray head per pytest worker, not one per run


def _simulate(home: Path, *extra: str) -> dict[str, Any]:
    result = run_cli(home, "simulate", "--sites", "3", "--rounds", "2", "--watermark", "none", "--json", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return outcome


def _ledger(home: Path, site: str) -> dict[str, float]:
    result = run_cli(home, "privacy", "ledger", "--site", site, "--json")
    assert result.returncode == 0, result.stderr
    return {row["kind"]: row["epsilon"] for row in json.loads(result.stdout)["entries"]}


def test_site_level_dp_under_ckks_is_reported_everywhere(cli_home: Path) -> None:
    outcome = _simulate(cli_home, "--secure-agg", "ckks", "--site-epsilon", "4")
    assert outcome["secure_aggregation"] == "ckks"
    assert set(outcome["site_epsilon"]) == {"site-0", "site-1", "site-2"}
    assert all(3.0 < eps <= 4.0 * 1.001 for eps in outcome["site_epsilon"].values())
    bom = read_lineage(read_bom(Path(outcome["artifact"])))["training"]
    assert bom["secure_aggregation"] == "ckks"
    for site in bom["sites"]:
        for kind in ("dp", "site_dp"):
            assert {"noise_multiplier", "sample_rate", "steps", "delta", "accountant", "epsilon"} <= set(site[kind])
        assert site["ledger"]["site"]["epsilon"] == pytest.approx(site["site_dp"]["epsilon"], rel=1e-6)
    shown = run_cli(cli_home, "models", "show", outcome["model"], "--json")
    assert json.loads(shown.stdout)["sites"][0]["site_epsilon"] == pytest.approx(outcome["site_epsilon"]["site-0"])


def test_ledger_composes_across_runs_and_a_capped_site_is_left_out(cli_home: Path) -> None:
    first = _simulate(cli_home, "--secure-agg", "none")
    spent = _ledger(cli_home, "site-0")["record"]
    assert spent == pytest.approx(first["epsilon"]["site-0"], rel=1e-6)
    # site-0 is at its cap: any further round would take it past
    capped = run_cli(cli_home, "privacy", "cap", "site-0", str(spent), "--kind", "record")
    assert capped.returncode == 0, capped.stderr
    second = _simulate(cli_home, "--secure-agg", "none")
    # composed over both runs on the same data manifest: more than one run, less than the naive sum
    total = _ledger(cli_home, "site-1")["record"]
    assert first["epsilon"]["site-1"] < total < 2 * first["epsilon"]["site-1"]
    # the coordinator identified every site before round 1 and left site-0 out of every round
    bom = read_lineage(read_bom(Path(second["artifact"])))["training"]
    assert {s["site"]: s["rounds"] for s in bom["sites"]} == {"site-1": 2, "site-2": 2}
    assert _ledger(cli_home, "site-0")["record"] == pytest.approx(spent, rel=1e-9)
