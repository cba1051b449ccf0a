"""One tiny simulated federation without secure aggregation: a sign-flipping site ruins FedAvg, Krum resists.

Four breast-cancer sites, two rounds, no DP, no watermark; one site
(⌈0.25 · 4⌉, chosen with the seed) sends −25× its update, clipped honestly
to the coordinator's bound so that the per-update check lets it through.
The held-out accuracy check is switched off (``max-accuracy-drop = 1``) so
that the aggregation rule alone decides. Two runs of ~40–90 s each here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lifecycle.registry import Registry
from simulations.federation import SimulationConfig, run


def _run(aggregation: str) -> dict[str, Any]:
    cfg = SimulationConfig(sites=4, rounds=2, watermark="none", secure_agg="none", dp_epsilon=0.0,
                           aggregation=aggregation, attack="sign-flipping:25", attackers=0.25)
    return run(cfg, lambda event, payload: None, run_config={"max-accuracy-drop": 1.0})


@pytest.mark.slow
def test_a_sign_flipping_site_hurts_fedavg_but_krum_keeps_the_accuracy(
        fedguard_home: Path, registry: Registry, shared_ray: str) -> None:
    fedavg, krum = _run("fedavg"), _run("krum")
    for outcome in (fedavg, krum):
        attack = outcome["attack"]
        assert attack["experiment"] is True and attack["name"] == "sign-flipping" and attack["factor"] == 25.0
        assert len(attack["attackers"]) == 1 and attack["attacker_sites"] == [f"site-{attack['attackers'][0]}"]
        assert outcome["model"] == "breast-cancer-attack-sign-flipping"
        assert not outcome["rejected_updates"]  # clipped honestly: nothing for the per-update check to see
    assert fedavg["attack"]["attackers"] == krum["attack"]["attackers"]  # the seed chose the same site
    assert krum["accuracy"] >= krum["baseline_accuracy"] - 0.1
    assert fedavg["accuracy"] < krum["accuracy"] - 0.3
