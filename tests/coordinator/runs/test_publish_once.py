"""A resumed run never publishes twice: a crash after the registry commit but before outcome.json.

The real coordinator (``run_federation``) and the real ClientApp over an
in-process grid, with a ``run-id`` as in a deployment (so a checkpoint and a
progress log are kept). The first run publishes; its ``outcome.json`` is then
removed, as if the coordinator had been killed between the registry commit
and writing it, and the same run is started again: it must find its
published version instead of publishing again (``training_run.id`` is unique,
so a second publish would fail the run for good).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

from flwr.app import Context, RecordDict
from flwr.serverapp import Grid
from sqlmodel import Session, select

from client.app import make_client_app
from coordinator.app import run_federation
from coordinator.config import CoordinatorConfig
from lifecycle.registry import Registry
from lifecycle.registry.tables import TrainingRun
from tests.client.test_outgoing import SITES, _write_federation
from tests.privacy.secagg.harness import LocalGrid


def _grid(configs: dict[str, dict[str, str]]) -> Grid:
    grid = LocalGrid(make_client_app(require_protection=False), SITES)
    for node, name in zip(grid.get_node_ids(), configs, strict=True):
        node_config: dict[str, bool | float | int | str] = dict(configs[name])
        grid.contexts[node] = Context(run_id=1, node_id=node, node_config=node_config, state=RecordDict(),
                                      run_config={})
    return cast(Grid, grid)  # LocalGrid implements the Grid calls run_federation makes


def test_a_resumed_run_that_already_published_writes_its_outcome_without_publishing(
        fedguard_home: Path, tmp_path: Path) -> None:
    coordinator, _, configs = _write_federation(tmp_path)
    cfg = CoordinatorConfig.from_mapping({
        "num-server-rounds": 1, "num-sites": SITES, "local-epochs": 1, "data-dir": str(coordinator),
        "watermark": "none", "secure-aggregation": "none", "round-timeout": 30.0, "model-name": "once",
        "dp-epsilon": 0.0, "run-id": "crash-after-publish",
    })
    first = run_federation(_grid(configs), cfg, lambda event, payload: None, flower_run=1)
    outcome_path = fedguard_home / "runs" / "crash-after-publish" / "outcome.json"
    assert outcome_path.exists() and first["version"] == 1
    outcome_path.unlink()  # killed after the registry commit, before the outcome was written

    events: list[tuple[str, dict[str, object]]] = []
    second = run_federation(_grid(configs), cfg, lambda event, payload: events.append((event, dict(payload))),
                            flower_run=2)

    registry = Registry.open()
    assert [v.version for v in registry.versions("once")] == [1]  # nothing published twice
    assert (second["model"], second["version"], second["artifact"]) == ("once", 1, first["artifact"])
    assert second["signature"]["verified"] and second["accuracy"] == first["accuracy"]
    assert second["resumed_after"] == 1 and second["flower_runs"] == [1, 2]
    assert json.loads(outcome_path.read_text())["version"] == 1  # the run is now marked finished
    assert ("stage", {"stage": "publish", "already_published": "once:1"}) in events
    assert ("stage", {"stage": "watermark"}) not in events
    assert registry.verify_audit_chain() > 0
    with Session(registry.engine) as session:
        assert session.exec(select(TrainingRun.mode)).all() == ["deployment"]  # a run with a run-id is deployed
