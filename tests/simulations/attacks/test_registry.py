"""The attack registry, the seeded choice of attackers, and where each defence can run."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.serverapp.strategy import Bulyan, MultiKrum

from coordinator.config import CoordinatorConfig
from coordinator.strategies.aggregation import create_aggregation
from lifecycle.errors import ConfigurationError
from simulations.attacks import available_attacks, create_attack, defence_applicability, select_attackers
from simulations.attacks.experiment import model_name, plan_attack
from simulations.federation import SimulationConfig


def test_every_attack_is_registered_under_its_name() -> None:
    assert available_attacks() == ("label-flipping", "sign-flipping", "scaling", "backdoor", "alie")
    for name in available_attacks():
        assert create_attack(name, sites=5, attackers=1).name == name


def test_a_spec_sets_the_primary_parameter_or_named_ones() -> None:
    assert create_attack("scaling:10").describe() == {"name": "scaling", "clip": "skip", "factor": 10.0}
    backdoor = create_attack("backdoor:target=1,fraction=0.3,clip=honest,width=2").describe()
    assert (backdoor["target"], backdoor["fraction"], backdoor["clip"], backdoor["width"]) == (1, 0.3, "honest", 2)
    mixed = create_attack("sign-flipping:5,clip=skip").describe()
    assert (mixed["factor"], mixed["clip"]) == (5.0, "skip")


@pytest.mark.parametrize(("spec", "message"), [
    ("flood", "unknown attack 'flood'; choose one of none, label-flipping"),
    ("scaling:big", "factor='big' is not a valid float"),
    ("scaling:power=2", "unknown parameter 'power=2'; it takes clip, factor"),
    ("scaling:-1", "use a positive number"),
    ("alie:clip=sometimes", "use one of honest, skip"),
    ("label-flipping:target=1", "target needs a source"),
    ("backdoor:fraction=0", "0 < fraction ≤ 1"),
])
def test_an_unknown_attack_or_parameter_is_a_configuration_error(spec: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        create_attack(spec)


@pytest.mark.parametrize(("sites", "fraction", "size"),
                         [(5, 0.2, 1), (5, 0.3, 2), (10, 0.3, 3), (7, 1.0, 7), (4, 0, 0)])
def test_attackers_are_a_seeded_choice_of_ceil_fraction_n_sites(sites: int, fraction: float, size: int) -> None:
    chosen = select_attackers(sites, fraction, seed=11)
    assert len(chosen) == size and chosen <= set(range(sites))
    assert select_attackers(sites, fraction, seed=11) == chosen
    seen = {select_attackers(10, 0.3, seed) for seed in range(20)}
    assert len(seen) > 5  # the seed decides


def test_a_simulation_refuses_an_attack_without_attackers_and_attackers_without_an_attack() -> None:
    with pytest.raises(ConfigurationError, match="no site would attack"):
        SimulationConfig(attack="scaling", attackers=0.0, watermark="none").validate()
    with pytest.raises(ConfigurationError, match="without --attack"):
        SimulationConfig(attackers=0.2, watermark="none").validate()
    with pytest.raises(ConfigurationError, match="between 0 and 1"):
        plan_attack("scaling", 1.5, 5, 0)
    with pytest.raises(ConfigurationError, match="1 ≤ f < n; got n=4, f=4"):  # before any site trains
        plan_attack("alie", 1.0, 4, 0)
    plan = plan_attack("alie", 0.4, 5, 0)
    assert len(plan.attackers) == 2 and plan.attack is not None and plan.attack.setting.attackers == 2


def test_an_attack_experiments_model_is_never_named_like_an_honest_one() -> None:
    assert model_name("backdoor:1", "breast-cancer") == "breast-cancer-attack-backdoor"
    assert model_name("none", "breast-cancer") == "breast-cancer"
    overrides = SimulationConfig(attack="scaling", attackers=0.2, watermark="none").coordinator_overrides(
        Path("."), Path("o.json"))
    assert overrides["model-name"] == "breast-cancer-attack-scaling"


def test_multi_krum_and_bulyan_are_flowers_with_the_tolerated_number_of_malicious_sites() -> None:
    multi = create_aggregation("multi-krum", sites=7)
    assert isinstance(multi, MultiKrum) and (multi.num_malicious_nodes, multi.num_nodes_to_select) == (2, 5)
    bulyan = create_aggregation("bulyan", sites=7)
    assert isinstance(bulyan, Bulyan) and bulyan.num_malicious_nodes == 1  # n ≥ 4f + 3
    assert create_aggregation("bulyan", sites=5).num_malicious_nodes == 0  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="bulyan needs at least 3 sites"):
        create_aggregation("bulyan", sites=2)


@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "krum", "multi-krum", "bulyan"])
def test_a_robust_rule_runs_without_secure_aggregation_and_is_reported_not_applicable_under_it(rule: str) -> None:
    assert defence_applicability(rule, "none") is None
    for secure in ("secagg+", "ckks"):
        reason = defence_applicability(rule, secure)
        assert reason is not None and reason.startswith(f"{rule} needs each site's individual update")
        assert "site clipping" in reason and "aggregate bounds" in reason
        with pytest.raises(ConfigurationError, match="needs each site's update"):  # real runs keep refusing it
            CoordinatorConfig.from_mapping({"aggregation": rule, "secure-aggregation": secure, "num-sites": 5,
                                            "he-public-context": "public.ctx"})
    assert defence_applicability("fedavg", "secagg+") is None
