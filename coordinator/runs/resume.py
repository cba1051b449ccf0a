"""Resuming a run from its last completed round after the coordinator was killed.

:class:`RunState` is what the ServerApp keeps per fedguard run id: the
progress log and the checkpoint directory. On start it loads the checkpoint
(if any); the strategy then runs only the remaining rounds, wrapped in
:class:`coordinator.strategies.round_offset.RoundOffset` so that every round keeps its true number — in the
messages to the sites, in SecAgg+'s round binding, and in the privacy
ledger's idempotent charge keys (site, manifest, run, round, kind), so a
round completed before the crash is never charged again.

A resumed run is a new Flower run: each site's DP step counter (kept in its
Flower ``Context``) restarts at zero, so the coordinator's per-segment step
tracking restarts too, and the ε reported in the lineage composes both
segments (:func:`compose_segments`). The interrupted round itself is
re-run; what a site may have released in the interrupted attempt stays
charged in the site's own ledger (conservative, as for any failed round).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord

from coordinator import logger
from coordinator.runs import run_dir
from coordinator.runs.checkpoint import Checkpoint
from coordinator.runs.progress import PROGRESS, ProgressLog
from coordinator.strategies.tracked import SiteLedger, TrackedStrategy
from federation.protocol import lineage_report, with_steps


@dataclass
class RunState:
    """Progress log and checkpoints of one fedguard run (``FEDGUARD_HOME/runs/<run-id>``)."""

    directory: Path
    progress: ProgressLog
    checkpoint: Checkpoint | None
    dropouts: list[dict[str, Any]] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)
    _restored: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, runs: Path, run_id: str) -> RunState:
        directory = run_dir(runs, run_id)
        checkpoint = Checkpoint.load(directory / "checkpoint")
        state = cls(directory, ProgressLog(directory / PROGRESS), checkpoint)
        if checkpoint is not None:
            state.dropouts = list(checkpoint.state.get("dropouts", []))
            state.segments = list(checkpoint.state.get("flower_runs", []))
            logger.info("run %s: resuming after round %d", run_id, checkpoint.round)
        return state

    @property
    def completed(self) -> int:
        return self.checkpoint.round if self.checkpoint is not None else 0

    def restore(self, model: torch.nn.Module, tracked: TrackedStrategy, history: list[dict[str, Any]]) -> None:
        """Load the checkpoint's weights, site lineage and history into this run's objects."""
        if self.checkpoint is None:
            return
        model.load_state_dict(self.checkpoint.weights)
        state = self.checkpoint.state
        tracked.rounds_aggregated = int(state.get("rounds_aggregated", self.checkpoint.round))
        for name, values in state.get("sites", {}).items():
            tracked.sites[name] = SiteLedger(**values)
            self._restored[name] = tracked.sites[name].dp
        history.extend(state.get("history", []))

    def total_dp(self, name: str, site: SiteLedger) -> dict[str, Any]:
        """The site's DP report over the whole run: earlier segments' steps composed with this one's.

        A site that has not reported since the resume still holds the
        checkpoint's totals (the very dict restored), which are returned as is.
        """
        base = self._restored.get(name)
        dp = site.dp
        if base is None or dp is base:
            return dp
        before, now = lineage_report(base), lineage_report(dp)
        if before is None or now is None:
            return dp
        return with_steps(dp, replace(now, steps=before.steps + now.steps))

    def save(self, server_round: int, arrays: ArrayRecord, tracked: TrackedStrategy,
             history: list[dict[str, Any]]) -> None:
        """Checkpoint after ``server_round`` (weights, lineage over all segments, history, dropouts)."""
        sites = {name: {**asdict(site), "dp": self.total_dp(name, site)} for name, site in tracked.sites.items()}
        Checkpoint(server_round, arrays.to_torch_state_dict(), {
            "rounds_aggregated": tracked.rounds_aggregated, "sites": sites, "history": history,
            "dropouts": self.dropouts, "flower_runs": self.segments,
        }).save(self.directory / "checkpoint")
