"""A grid file: which simulation settings an experiment runs, as a list of trials with stable ids.

The file is flat TOML with hyphenated keys (DESIGN §7 item 10), and every
setting is a field of :class:`~simulations.federation.SimulationConfig`
(``dp-epsilon`` is ``dp_epsilon``), read from the dataclass itself, so a
field added there is a grid key at once::

    name = "privacy-utility"
    seeds = [1, 2, 3]              # or: repeat = 3 (seeds seed, seed+1, ...)

    [fixed]                        # every trial
    dataset = "breast-cancer"
    sites = 3

    [grid]                         # the cross product of these lists
    dp-epsilon = [0.0, 1.0, 3.0]
    secure-agg = ["secagg+", "none"]

    [[trials]]                     # and/or explicit trials, each over [fixed]
    aggregation = "median"
    secure-agg = "none"

A trial's id is a hash of its explicit settings (not of the defaults), so the
same setting written ``3`` or ``3.0``, in another order or in another file,
is the same trial, and a results folder can be resumed by id.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

from lifecycle.errors import ConfigurationError

TOP_LEVEL = ("name", "description", "seeds", "repeat", "fixed", "grid", "trials")


@dataclass(frozen=True)
class Trial:
    """One simulation of the experiment: its id and the settings the grid gives it (hyphenated keys)."""

    id: str
    settings: Mapping[str, Any]

    def config_values(self) -> dict[str, Any]:
        """The settings as :class:`SimulationConfig` keyword arguments."""
        return {key.replace("-", "_"): value for key, value in self.settings.items()}


@dataclass(frozen=True)
class Grid:
    """A parsed grid file: its trials in file order, and the keys whose values differ between them."""

    path: Path
    name: str
    trials: tuple[Trial, ...]
    varied: tuple[str, ...]


@cache
def setting_types() -> dict[str, Any]:
    """Every grid key (a :class:`SimulationConfig` field, hyphenated) and its Python type."""
    from simulations.federation import SimulationConfig

    hints = typing.get_type_hints(SimulationConfig)
    return {f.name.replace("_", "-"): hints.get(f.name, Any) for f in fields(SimulationConfig)}


def trial_id(settings: Mapping[str, Any]) -> str:
    """A stable id of explicit settings: the first 12 hex digits of the SHA-256 of their canonical JSON."""
    canonical = json.dumps(dict(settings), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def load_grid(path: Path) -> Grid:
    """Read and check the grid file at ``path``; every error names the file and the key."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: no such grid file; give the path of a grid TOML file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"{path}: not a readable TOML grid ({exc}); fix the file") from None
    return parse_grid(document, path)


def parse_grid(document: Mapping[str, Any], path: Path) -> Grid:
    """Expand a grid document into its trials (see the module docstring for the format)."""
    unknown = sorted(set(document) - set(TOP_LEVEL))
    if unknown:
        raise ConfigurationError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; "
                                 f"a grid has {', '.join(TOP_LEVEL)}")
    fixed = _settings(_table(document, "fixed", path), f"{path} [fixed]")
    axes = _axes(_table(document, "grid", path), path)
    explicit = document.get("trials", [])
    if not isinstance(explicit, list) or not all(isinstance(t, dict) for t in explicit):
        raise ConfigurationError(f"{path}: 'trials' must be an array of tables ([[trials]])")
    assignments = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())] \
        if axes else []
    assignments += [_settings(t, f"{path} [[trials]] #{i + 1}") for i, t in enumerate(explicit)]
    seeds = _seeds(document, path, fixed, in_grid="seed" in axes)
    trials: dict[str, Trial] = {}
    for assignment in assignments or [{}]:
        for seed in seeds if "seed" not in assignment else [None]:
            settings = {**fixed, **assignment, **({"seed": seed} if seed is not None else {})}
            trial = Trial(trial_id(settings), settings)
            trials.setdefault(trial.id, trial)
    ordered = tuple(trials.values())
    keys = sorted({k for t in ordered for k in t.settings})
    varied = tuple(k for k in keys if len({json.dumps(t.settings.get(k)) for t in ordered}) > 1)
    return Grid(path, str(document.get("name") or path.stem), ordered, varied)


def _table(document: Mapping[str, Any], key: str, path: Path) -> dict[str, Any]:
    table = document.get(key, {})
    if not isinstance(table, dict):
        raise ConfigurationError(f"{path}: [{key}] must be a table of settings")
    return table


def _axes(table: Mapping[str, Any], path: Path) -> dict[str, list[Any]]:
    axes: dict[str, list[Any]] = {}
    for key, values in table.items():
        if not isinstance(values, list) or not values:
            raise ConfigurationError(f"{path} [grid] {key}: give a non-empty list of values, e.g. {key} = [1, 2]")
        name = _known(key, f"{path} [grid]")
        axes[name] = [_coerce(key, v, f"{path} [grid]") for v in values]
    return axes


def _settings(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    return {_known(key, where): _coerce(key, value, where) for key, value in table.items()}  # key checked first


def _known(key: str, where: str) -> str:
    name = key.replace("_", "-")
    if name not in setting_types():
        raise ConfigurationError(f"{where}: unknown setting '{key}'; known settings: {', '.join(setting_types())}")
    return name


def _coerce(key: str, value: Any, where: str) -> Any:
    """``value`` as the field's type: an int for a float field becomes a float; anything else must match."""
    expected = setting_types()[key.replace("_", "-")]
    if isinstance(value, (dict, list)):
        raise ConfigurationError(f"{where} {key}: a setting is one value, not {type(value).__name__}")
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected in (int, float, str, bool) and not (isinstance(value, expected) and
                                                   (expected is bool or not isinstance(value, bool))):
        raise ConfigurationError(f"{where} {key} = {value!r}: expected {expected.__name__}")
    return value


def _seeds(document: Mapping[str, Any], path: Path, fixed: Mapping[str, Any], *, in_grid: bool) -> Sequence[Any]:
    """The seeds each assignment runs with: ``seeds``, ``repeat``, or ``[None]`` (the settings' own seed)."""
    seeds, repeat = document.get("seeds"), document.get("repeat")
    if (seeds is not None or repeat is not None) and in_grid:
        raise ConfigurationError(f"{path}: seed is a [grid] key and 'seeds'/'repeat' are given too; keep one")
    if seeds is not None and repeat is not None:
        raise ConfigurationError(f"{path}: give 'seeds' or 'repeat', not both")
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ConfigurationError(f"{path}: seeds must be a non-empty list of integers, e.g. seeds = [1, 2, 3]")
        return list(dict.fromkeys(seeds))
    if repeat is not None:
        if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
            raise ConfigurationError(f"{path}: repeat must be a whole number ≥ 1")
        from simulations.federation import SimulationConfig

        base = int(fixed.get("seed", SimulationConfig.seed))
        return list(range(base, base + repeat))
    return [None]
