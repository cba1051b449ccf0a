"""An attack experiment in a simulated run: who attacks, the mods, and what the outcome records.

The run's outcome gets an ``attack`` section: ``experiment: true``, the
attack and its parameters, the attacker partition ids and site names (chosen
with the run's seed), and the attack's success measures on the coordinator's
held-out set with the published model (:mod:`simulations.attacks.metrics`).
The published model's registry name says ``attack`` too (unless the
researcher named it), so that it is never taken for an honest federation's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.clientapp.typing import Mod

from federation.tabular import load_csv, load_schema
from lifecycle.artifacts import load_model
from lifecycle.errors import ConfigurationError
from simulations.attacks.base import Attack
from simulations.attacks.metrics import attack_metrics
from simulations.attacks.mods import attack_mods, select_attackers
from simulations.attacks.registry import NO_ATTACK, attack_name, create_attack


@dataclass(frozen=True)
class AttackPlan:
    """The attack of one run (None: an honest run) and its attackers' partition ids."""

    attack: Attack | None
    attackers: frozenset[int]

    @property
    def mods(self) -> tuple[Mod, ...]:
        """For ``make_client_app(mods=...)``."""
        return () if self.attack is None else (attack_mods(self.attack, self.attackers).site,)

    @property
    def update_mods(self) -> tuple[Mod, ...]:
        """For ``make_client_app(update_mods=...)``."""
        return () if self.attack is None else (attack_mods(self.attack, self.attackers).update,)

    def report(self, outcome: Mapping[str, Any], data_dir: Path) -> dict[str, Any]:
        """The outcome's ``attack`` section (nothing for an honest run)."""
        if self.attack is None:
            return {}
        metrics: dict[str, float] = {}
        if "artifact" in outcome:
            schema = load_schema(data_dir / "schema.json")
            test = load_csv(data_dir / "test.csv", list(schema.features), schema.target, len(schema.labels))
            model, _ = load_model(Path(outcome["artifact"]))
            metrics = attack_metrics(self.attack, model, test.features, test.labels, len(schema.labels))
        return {"attack": {"experiment": True, **self.attack.describe(), "attackers": sorted(self.attackers),
                           "attacker_sites": [f"site-{i}" for i in sorted(self.attackers)],
                           "main_task_accuracy": outcome.get("accuracy"), **metrics}}


def plan_attack(spec: str, fraction: float, sites: int, seed: int) -> AttackPlan:
    """Check ``spec`` and ``fraction`` together and choose the attackers (seeded)."""
    if attack_name(spec) == NO_ATTACK:
        if fraction:
            raise ConfigurationError(f"--attackers {fraction} without --attack: name the attack the sites run")
        return AttackPlan(None, frozenset())
    attackers = select_attackers(sites, fraction, seed)
    if not attackers:
        raise ConfigurationError(f"--attack {spec} with --attackers {fraction}: no site would attack; "
                                 "use a fraction above 0")
    return AttackPlan(create_attack(spec, sites=sites, attackers=len(attackers), seed=seed), attackers)


def model_name(spec: str, dataset: str) -> str:
    """The registry name of an attack experiment's model when the researcher named none."""
    return dataset if attack_name(spec) == NO_ATTACK else f"{dataset}-attack-{attack_name(spec)}"
