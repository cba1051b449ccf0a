"""Collect the sites' noised reference histograms through a secure sum; build the BOM's ``reference`` section.

The coordinator fixes the bin edges from its held-out set, then, right after
the identity query, offers every identified site to take part
(:mod:`federation.reference_share`). The accepting sites whose coordinator-side
ledger projection stays under cap are charged (kind ``reference``, before the
release), and one secure sum runs among them: SecAgg+ or CKKS, as the run's
``secure-aggregation`` says (:mod:`privacy.secure_sum`). This module only
ever holds the *sum* of the sites' noised counts: no message it receives
carries one site's counts (see :mod:`federation.reference` for what the sum
discloses, and the test ``tests/coordinator/test_reference.py`` that checks
every message). The section lists the sites included and counts those that
declined.

The reference is left out, and the section says why, when the run has no
secure aggregation (``secure-aggregation = "none"``: a site's counts would
reach the coordinator in the clear), when ``reference-epsilon = 0``, when too
few sites accept for the secure sum, or when the sum fails. A resumed run
reuses the sum saved by its first segment (``reference.json`` in the run's
directory) rather than asking the sites to release their counts again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from torch import nn

from coordinator import logger
from coordinator.config import CoordinatorConfig
from coordinator.ledger import RunLedger
from federation.protocol import (
    CONFIG_RECORD,
    REFERENCE_MESSAGE_TYPE,
    REFERENCE_RECORD,
    ReferenceAnswer,
    ReferenceRequest,
    identity_query,
)
from federation.reference import reference_edges
from federation.reference_share import noise_plan, reference_charge
from federation.tabular import TabularData
from lifecycle.architecture import DataSchema
from lifecycle.bom.reference import Edges, ReferenceNoise, ReferenceStats, num_bins, omitted_section, split_counts
from privacy.discrete_gaussian import DistributedPlan
from privacy.secure_sum import SecureSumError, secure_sum
from privacy.secure_sum.coordinator import bounds_for


@dataclass
class ReferenceCollector:
    """The run's reference: its request, then either the noised sum or why it was left out."""

    request: ReferenceRequest
    timeout: float = 600.0
    he_public_context: str = ""
    counts: tuple[tuple[int, ...], ...] | None = None
    sites: tuple[str, ...] = ()
    declined: list[str] = field(default_factory=list)
    noise: ReferenceNoise | None = None
    omitted: str = ""

    @classmethod
    def from_held_out(cls, test: TabularData, cfg: CoordinatorConfig) -> ReferenceCollector:
        """Edges from the quantiles of the coordinator's own held-out set; (ε, δ) from the run config."""
        request = ReferenceRequest(reference_edges(test.features), cfg.reference_epsilon, cfg.dp_delta,
                                   cfg.secure_aggregation)
        return cls(request, cfg.round_timeout, cfg.he_public_context)

    @property
    def edges(self) -> Edges:
        return self.request.edges

    def collect(self, grid: Grid, run_ledger: RunLedger, train_config: ConfigRecord, *,
                saved: Path | None = None) -> None:
        """Offer, admit, charge and securely sum (or note why not); see the module docstring."""
        if saved is not None and saved.exists():
            self._load(saved)
            return
        if self.request.epsilon <= 0:
            self.omitted = "reference-epsilon = 0: the run asked for no reference statistics"
        elif self.request.secure_sum not in ("secagg+", "ckks"):
            self.omitted = ("no secure aggregation (secure-aggregation = none): a site's counts would reach "
                            "the coordinator in the clear, so no site was asked for them")
        else:
            config = identity_query(train_config)
            accepted, declined = self._offer(grid, sorted(run_ledger.nodes), config)
            self.declined = sorted(run_ledger.nodes[n] for n in declined)
            self._sum(grid, run_ledger, accepted, config)
        if self.omitted:
            logger.warning("reference statistics left out: %s", self.omitted)
        if saved is not None:
            saved.write_text(json.dumps(self._state()))

    def _offer(self, grid: Grid, nodes: list[int], config: ConfigRecord) -> tuple[list[int], list[int]]:
        """The nodes that accept, and those that explicitly decline (errors and silence are neither)."""
        messages = [Message(RecordDict({CONFIG_RECORD: config, REFERENCE_RECORD: self.request.to_record("offer")}),
                            dst_node_id=node, message_type=REFERENCE_MESSAGE_TYPE, group_id="0") for node in nodes]
        accepted: list[int] = []
        declined: list[int] = []
        for reply in grid.send_and_receive(messages, timeout=self.timeout):
            node = int(reply.metadata.src_node_id)
            answer = ReferenceAnswer.from_message(reply)
            if answer is not None and answer.accept and node in nodes and node not in accepted:
                accepted.append(node)
                continue
            reason = reply.error.reason if reply.has_error() else answer.reason if answer else "no answer"
            logger.info("reference statistics: node %d does not take part (%s)", node, reason)
            if answer is not None and not answer.accept and node in nodes:
                declined.append(node)
        return sorted(accepted), sorted(set(declined))

    def _sum(self, grid: Grid, run_ledger: RunLedger, nodes: list[int], config: ConfigRecord) -> None:
        try:
            nodes, plan = self._admit(run_ledger, nodes)
            for node in nodes:  # charged before the release (a failed sum stays charged: conservative)
                name = run_ledger.nodes[node]
                run_ledger.ledger.record(reference_charge(name, run_ledger.manifests[name], run_ledger.run_id, plan),
                                         actor="coordinator", enforce=False)
            result = secure_sum(
                grid, nodes, num_bins(self.edges), mechanism=self.request.secure_sum,
                message_type=REFERENCE_MESSAGE_TYPE,
                extra={CONFIG_RECORD: config, REFERENCE_RECORD: self.request.to_record("sum")}, timeout=self.timeout,
                he_public_context=Path(self.he_public_context) if self.he_public_context else None,
            )
        except SecureSumError as exc:
            self.omitted = f"the secure sum of the sites' counts did not complete ({exc})"
            return
        self.counts = split_counts(result.total.tolist(), self.edges)
        self.sites = tuple(sorted(run_ledger.nodes[n] for n in result.contributors))
        self.noise = ReferenceNoise(self.request.secure_sum, plan.epsilon(), plan.delta, plan.sigma,
                                    float(np.sqrt(len(result.contributors))) * plan.sigma, plan.min_contributors)

    def _admit(self, run_ledger: RunLedger, nodes: list[int]) -> tuple[list[int], DistributedPlan]:
        """Leave out sites over their coordinator-side cap, until the plan for the rest fits them all."""
        while True:
            plan = noise_plan(self.request, bounds_for(self.request.secure_sum, len(nodes), num_bins(self.edges)))
            over = [n for n in nodes if not run_ledger.ledger.project(
                run_ledger.nodes[n], run_ledger.manifests[run_ledger.nodes[n]], "reference", plan.history()).allowed]
            if not over:
                return nodes, plan
            logger.warning("reference statistics: leaving out %s (privacy cap)", [run_ledger.nodes[n] for n in over])
            nodes = [n for n in nodes if n not in over]

    def section(self, model: nn.Module, schema: DataSchema, test: TabularData) -> dict[str, Any]:
        """The BOM section, with ``model``'s predicted classes on the held-out set, or why it is left out."""
        if self.counts is None:
            return omitted_section(self.omitted or "no reference statistics were collected", len(self.declined))
        model.eval()
        with torch.no_grad():
            predicted = model(torch.from_numpy(test.features)).argmax(dim=1).numpy()
        predictions = np.bincount(predicted, minlength=len(schema.labels))[: len(schema.labels)]
        return ReferenceStats(
            features=schema.features, edges=self.edges, counts=self.counts, classes=schema.labels,
            predictions=tuple(int(c) for c in predictions), sites=self.sites, declined=len(self.declined),
            noise=self.noise,
        ).to_dict()

    def _state(self) -> dict[str, Any]:
        return {"counts": [list(r) for r in self.counts] if self.counts is not None else None,
                "sites": list(self.sites), "declined": self.declined, "omitted": self.omitted,
                "noise": self.noise.to_dict() if self.noise is not None else None}

    def _load(self, path: Path) -> None:
        state = json.loads(path.read_text())
        self.counts = tuple(tuple(int(c) for c in r) for r in state["counts"]) if state["counts"] else None
        self.sites, self.declined = tuple(state["sites"]), list(state["declined"])
        self.omitted = str(state["omitted"])
        self.noise = ReferenceNoise.from_dict(state["noise"]) if state["noise"] else None
        logger.info("reference statistics: reusing the sum of the run's first segment (%s)", path)
