"""Grid files: the cross product, explicit trials, seeds, refused keys, stable ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifecycle.errors import ConfigurationError
from simulations.experiments.grid import load_grid, setting_types, trial_id

ROOT = Path(__file__).resolve().parents[3]


def _grid(tmp_path: Path, text: str, name: str = "grid.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_cross_product_times_seeds(tmp_path: Path) -> None:
    grid = load_grid(_grid(tmp_path, """
seeds = [1, 2]
[fixed]
sites = 3
[grid]
dp-epsilon = [0, 1.0, 3.0]
secure-agg = ["secagg+", "none"]
"""))
    assert len(grid.trials) == 3 * 2 * 2
    assert {t.settings["dp-epsilon"] for t in grid.trials} == {0.0, 1.0, 3.0}
    assert all(isinstance(t.settings["dp-epsilon"], float) for t in grid.trials)  # 0 read as the float field 0.0
    assert {t.settings["seed"] for t in grid.trials} == {1, 2}
    assert all(t.settings["sites"] == 3 for t in grid.trials)
    assert grid.varied == ("dp-epsilon", "secure-agg", "seed")
    assert len({t.id for t in grid.trials}) == 12


def test_explicit_trials_and_repeat(tmp_path: Path) -> None:
    grid = load_grid(_grid(tmp_path, """
repeat = 3
[fixed]
seed = 10
rounds = 2
[[trials]]
aggregation = "median"
secure-agg = "none"
[[trials]]
site-epsilon = 2.0
seed = 7
"""))
    seeds = [(t.settings.get("aggregation"), t.settings["seed"]) for t in grid.trials]
    assert seeds == [("median", 10), ("median", 11), ("median", 12), (None, 7)]  # an explicit seed is kept
    assert all(t.settings["rounds"] == 2 for t in grid.trials)


def test_no_grid_is_one_trial_of_the_fixed_settings(tmp_path: Path) -> None:
    grid = load_grid(_grid(tmp_path, "[fixed]\nsites = 2\n"))
    assert [dict(t.settings) for t in grid.trials] == [{"sites": 2}]


def test_ids_are_stable_across_order_spelling_and_files(tmp_path: Path) -> None:
    one = load_grid(_grid(tmp_path, "[fixed]\nsites = 2\ndp-epsilon = 3\n", "a.toml"))
    two = load_grid(_grid(tmp_path, "[fixed]\ndp_epsilon = 3.0\nsites = 2\n", "b.toml"))
    assert one.trials[0].id == two.trials[0].id == trial_id({"sites": 2, "dp-epsilon": 3.0})
    assert trial_id({"sites": 2, "dp-epsilon": 1.0}) != one.trials[0].id
    assert len(one.trials[0].id) == 12


@pytest.mark.parametrize(("text", "words"), [
    ("[grid]\ndp-epsilonn = [1.0]\n", ["grid.toml [grid]", "unknown setting 'dp-epsilonn'", "dp-epsilon"]),
    ("[fixed]\nbogus = 1\n", ["[fixed]", "unknown setting 'bogus'", "known settings"]),
    ("[[trials]]\nsites = 2\n[[trials]]\nnope = 1\n", ["[[trials]] #2", "'nope'"]),
    ("colour = 1\n", ["unknown top-level key(s) colour"]),
    ("[grid]\nsites = 3\n", ["[grid] sites", "non-empty list"]),
    ("[fixed]\nsites = 2.5\n", ["sites = 2.5", "expected int"]),
    ("[fixed]\ndataset = 1\n", ["dataset = 1", "expected str"]),
    ("seeds = [1]\n[grid]\nseed = [1, 2]\n", ["seed is a [grid] key"]),
    ("seeds = []\n", ["seeds must be a non-empty list"]),
    ("[fixed\n", ["not a readable TOML grid"]),
])
def test_bad_grids_are_refused_naming_file_and_key(tmp_path: Path, text: str, words: list[str]) -> None:
    path = _grid(tmp_path, text)
    with pytest.raises(ConfigurationError) as caught:
        load_grid(path)
    message = str(caught.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_keys_are_the_simulation_config_fields() -> None:
    from dataclasses import fields

    from simulations.federation import SimulationConfig

    assert set(setting_types()) == {f.name.replace("_", "-") for f in fields(SimulationConfig)}


def test_the_shipped_smoke_grid_is_a_2x2() -> None:
    grid = load_grid(ROOT / "simulations" / "grids" / "smoke.toml")
    assert len(grid.trials) == 4
    assert grid.varied == ("dp-epsilon", "seed")


@pytest.mark.parametrize("name", ["privacy_utility", "attacks", "membership", "site_dp_sites"])
def test_the_reference_grids_load_and_every_setting_validates_or_is_not_applicable(name: str) -> None:
    """The shipped reference experiments (docs/research.md) parse, and no trial is refused for a typo.

    A trial that validation refuses must be a robust rule under secure
    aggregation (recorded as not applicable by design), nothing else.
    """
    from simulations.federation import SimulationConfig

    grid = load_grid(ROOT / "simulations" / "grids" / f"{name}.toml")
    assert len({t.id for t in grid.trials}) == len(grid.trials)
    for trial in grid.trials:
        cfg = SimulationConfig(**{k.replace("-", "_"): v for k, v in trial.settings.items()})
        try:
            cfg.validate()
        except ConfigurationError as exc:
            assert trial.settings.get("secure-agg", "secagg+") != "none", exc
            assert trial.settings.get("aggregation") not in (None, "fedavg"), exc
