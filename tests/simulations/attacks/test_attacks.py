"""Each attack's effect on one site's update (or data) is the one its paper describes.

Pure checks on :meth:`Attack.poison` / :meth:`Attack.craft`, then the same
attacks through the real site ClientApp (``update_mods``/``mods``), compared
with the honest site's update for the same instruction.
"""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
from flwr.app import ArrayRecord

from federation.tabular import load_csv
from lifecycle.architecture import ModelSpec
from simulations.attacks import Records, attack_mods, create_attack
from simulations.attacks.alie import z_max
from simulations.attacks.backdoor import Backdoor
from simulations.attacks.data import attack_folder
from tests.simulations.attacks.sites import Sites, train_config, write_sites

Federation = tuple[Path, list[str], ModelSpec, ArrayRecord]

RNG = np.random.default_rng(3)
DELTA = RNG.normal(size=50)


def _no_bootstrap(count: int) -> list[np.ndarray]:
    raise AssertionError("this attack needs no other updates")


# ------------------------------------------------------------------ the attacks' arithmetic


def test_sign_flipping_sends_minus_the_update_times_its_factor() -> None:
    assert np.array_equal(create_attack("sign-flipping").craft(DELTA, _no_bootstrap, RNG), -DELTA)
    assert np.allclose(create_attack("sign-flipping:3").craft(DELTA, _no_bootstrap, RNG), -3 * DELTA)


def test_scaling_multiplies_the_norm_by_lambda() -> None:
    crafted = create_attack("scaling:7.5").craft(DELTA, _no_bootstrap, RNG)
    assert np.linalg.norm(crafted) == pytest.approx(7.5 * np.linalg.norm(DELTA))
    assert create_attack("scaling").skips_clipping and not create_attack("scaling:clip=honest").skips_clipping


def test_label_flipping_maps_every_label_to_c_minus_1_minus_y_or_source_to_target() -> None:
    records = Records(np.zeros((6, 2), dtype=np.float32), np.array([0, 1, 2, 2, 1, 0]), 3)
    assert create_attack("label-flipping").poison(records, RNG).labels.tolist() == [2, 1, 0, 0, 1, 2]
    assert create_attack("label-flipping:source=2,target=0").poison(records, RNG).labels.tolist() == [0, 1, 0, 0, 1, 0]
    assert create_attack("label-flipping:0").poison(records, RNG).labels.tolist() == [2, 1, 2, 2, 1, 2]


def test_backdoor_stamps_the_trigger_and_target_on_its_fraction_and_replaces_the_model() -> None:
    features = RNG.normal(size=(40, 6)).astype(np.float32)
    mean, scale = features.mean(0), features.std(0)
    attack = create_attack("backdoor:target=1,fraction=0.25,width=2,sigmas=8", sites=5)
    assert isinstance(attack, Backdoor)
    other = create_attack("backdoor:boost=2.5")
    assert isinstance(other, Backdoor) and other.gamma == 2.5
    poisoned = attack.poison(Records(features, np.zeros(40, dtype=np.int64), 2, mean, scale),
                             np.random.default_rng(0))
    stamped = np.all(np.isclose(poisoned.features[:, :2], mean[:2] + 8 * scale[:2]), axis=1)
    assert stamped.sum() == 10  # round(0.25 · 40) records carry the trigger ...
    assert np.array_equal(poisoned.labels == 1, stamped)  # ... exactly they get the target label
    assert np.array_equal(poisoned.features[~stamped], features[~stamped])  # the rest stay clean
    assert np.array_equal(poisoned.features[stamped, 2:], features[stamped, 2:])
    assert attack.gamma == 5  # γ = n/η with η = 1 (Bagdasaryan et al. 2020, §4)
    assert np.allclose(attack.craft(DELTA, _no_bootstrap, RNG), 5 * DELTA)


@pytest.mark.parametrize(("n", "f"), [(50, 12), (20, 4), (5, 1), (10, 3)])
def test_alie_z_is_the_papers_z_max(n: int, f: int) -> None:
    s = n // 2 + 1 - f
    assert z_max(n, f) == pytest.approx(NormalDist().inv_cdf((n - s) / n))
    assert create_attack("alie", sites=n, attackers=f).step == pytest.approx(z_max(n, f))  # type: ignore[attr-defined]


def test_alie_sends_mean_minus_z_sigma_per_coordinate() -> None:
    others = [RNG.normal(size=50) for _ in range(3)]
    asked: list[int] = []

    def bootstrap(count: int) -> list[np.ndarray]:
        asked.append(count)
        return others

    crafted = create_attack("alie:samples=3", sites=10, attackers=2).craft(DELTA, bootstrap, RNG)
    stack = np.stack([DELTA, *others])
    assert asked == [3]
    assert np.allclose(crafted, stack.mean(0) - z_max(10, 2) * stack.std(0))
    assert np.allclose(create_attack("alie:z=1.5").craft(DELTA, bootstrap, RNG), stack.mean(0) - 1.5 * stack.std(0))


# ------------------------------------------------------------------ through the real site agent


@pytest.fixture
def federation(tmp_path: Path, fedguard_home: Path) -> Federation:
    data = tmp_path / "data"
    names, spec, arrays = write_sites(data, 3)
    return data, names, spec, arrays


def _attacked(spec: str, chosen: frozenset[int] = frozenset({1}), **setting: int) -> Sites:
    mods = attack_mods(create_attack(spec, **setting), chosen)
    return Sites(3, mods=[mods.site], update_mods=[mods.update])


def test_a_sign_flipping_site_sends_minus_its_honest_update_clipped_like_any_other(federation: Federation) -> None:
    data, names, spec, arrays = federation
    config = train_config(names, spec, data, clip_norm=10.0)
    honest, attacked = Sites(3), _attacked("sign-flipping")
    assert np.allclose(attacked.train(1, arrays, config), -honest.train(1, arrays, config), atol=1e-6)
    assert np.allclose(attacked.train(0, arrays, config), honest.train(0, arrays, config))  # not an attacker
    small = train_config(names, spec, data, clip_norm=0.05)  # below the update's norm: clipped honestly
    assert np.linalg.norm(attacked.train(1, arrays, small)) == pytest.approx(0.05, rel=1e-4)


def test_a_scaling_site_that_skips_clipping_sends_lambda_times_its_update(federation: Federation) -> None:
    data, names, spec, arrays = federation
    config = train_config(names, spec, data, clip_norm=0.5)
    honest = Sites(3).train(1, arrays, train_config(names, spec, data))
    skipped = _attacked("scaling:20").train(1, arrays, config)
    assert np.allclose(skipped, 20 * honest, atol=1e-5)
    assert np.linalg.norm(skipped) > 0.5  # the coordinator's bound was ignored
    clipped = _attacked("scaling:factor=20,clip=honest").train(1, arrays, config)
    assert np.linalg.norm(clipped) == pytest.approx(0.5, rel=1e-4)


def test_a_label_flipping_site_trains_on_its_file_with_labels_mapped(federation: Federation) -> None:
    data, names, spec, arrays = federation
    config = train_config(names, spec, data)
    attacked = _attacked("label-flipping")
    update = attacked.train(1, arrays, config)
    (poisoned,) = attack_folder(data / "site-1.csv").glob("site-1-label-flipping.csv")
    original = load_csv(data / "site-1.csv", names, "label", 2)
    flipped = load_csv(poisoned, names, "label", 2)
    assert np.array_equal(flipped.labels, 1 - original.labels)
    assert np.array_equal(flipped.features, original.features)
    assert not np.allclose(update, Sites(3).train(1, arrays, config))


def test_a_backdoor_site_poisons_its_fraction_and_boosts_by_the_number_of_sites(federation: Federation) -> None:
    data, names, spec, arrays = federation
    config = train_config(names, spec, data)
    attack = create_attack("backdoor:target=0,fraction=0.5", sites=3)
    assert isinstance(attack, Backdoor)
    mods = attack_mods(attack, frozenset({2}))
    update = Sites(3, mods=[mods.site], update_mods=[mods.update]).train(2, arrays, config)
    poisoned = load_csv(attack_folder(data / "site-2.csv") / "site-2-backdoor.csv", names, "label", 2)
    mean, scale = arrays["0.mean"].numpy(), arrays["0.scale"].numpy()
    stamped = np.all(np.isclose(poisoned.features[:, :3], mean[:3] + 10 * scale[:3], rtol=1e-5), axis=1)
    assert stamped.sum() == 30 and np.all(poisoned.labels[stamped] == 0)
    # the update is γ = 3 times what the site trained on its poisoned file (model replacement)
    trained = Sites(3, update_mods=[attack_mods(create_attack("backdoor:boost=1,fraction=0.5"), frozenset({2})).update])
    assert np.allclose(update, 3 * trained.train(2, arrays, config), atol=1e-5)


def test_an_alie_site_sends_mean_minus_z_sigma_of_its_own_update_and_its_bootstrap_updates(
        federation: Federation) -> None:
    data, names, spec, arrays = federation
    config = train_config(names, spec, data)
    update = _attacked("alie:samples=2", sites=3, attackers=1).train(1, arrays, config)
    folder = attack_folder(data / "site-1.csv")
    honest = Sites(3)
    own = honest.train(1, arrays, config)
    others = []
    for i in range(2):  # the honest site trained on each bootstrap resample the attacker wrote
        (data / "site-1.csv").write_bytes((folder / f"site-1-bootstrap-1-{i}.csv").read_bytes())
        others.append(honest.train(1, arrays, config))
    stack = np.stack([own, *others])
    assert np.allclose(update, stack.mean(0) - z_max(3, 1) * stack.std(0), atol=1e-5)
