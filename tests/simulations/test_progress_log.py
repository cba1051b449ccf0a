"""A simulation writes the progress log a deployed run writes, so the operator console follows it live."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedguard.console import Runs
from lifecycle.errors import ConfigurationError
from lifecycle.registry import Registry
from simulations.federation import SimulationConfig, _logged, run


def test_every_event_goes_to_the_observer_and_the_run_folder(registry: Registry) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    folder: Path = registry.home.runs / "sim-20261205-000000-abcdef"
    observer, _ = _logged(lambda event, payload: seen.append((event, dict(payload))), folder,
                          SimulationConfig(sites=3, rounds=2))
    observer("stage", {"stage": "partition", "report": "the partition report"})
    observer("round", {"round": 1, "rounds": 2, "accuracy": 0.7, "epsilon_max": 1.2, "sites": 3, "dropped": []})
    assert [event for event, _ in seen] == ["stage", "round"]
    assert seen[0][1]["report"] == "the partition report"  # the printer still gets everything
    assert json.loads((folder / "simulation.json").read_text())["sites"] == 3
    run = Runs(registry).run(folder.name)
    assert (run.kind, run.status, [r["round"] for r in run.rounds]) == ("simulation", "running", [1])
    assert run.config["rounds"] == 2
    observer("done", {"model": "demo", "version": 1, "accuracy": 0.7})
    assert (Runs(registry).run(folder.name).status, Runs(registry).run(folder.name).model) == ("done", "demo:1")


def test_a_simulation_that_fails_says_so_in_its_log(registry: Registry) -> None:
    """A run that fails after its folder exists ends as ``failed`` on the console, not ``running`` for ever."""
    with pytest.raises(ConfigurationError) as refused:  # 455 training records cannot feed 400 sites
        run(SimulationConfig(sites=400, rounds=1, watermark="none"), lambda event, payload: None)
    (view,) = Runs(registry).runs()
    assert (view.status, view.message) == ("failed", f"run failed: {refused.value}")
