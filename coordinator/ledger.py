"""The coordinator's side of the privacy ledger for one run: charge, project, leave out.

Before the first round the coordinator asks every connected site who it is
(:func:`identify_sites`: name, data manifest and the DP cost of one round —
public metadata). Before each round, a site whose next round would take it
past its cap is left out of the sampled set; the site's own ledger vetoes
independently (``privacy.ledger.guard``). After every aggregated round each
participating site is charged, in the persistent ledger of the registry
database, with exactly what the round cost it: the record-level DP-SGD steps
it reports (σ, q, new steps) and, under site-level DP, one step of the
site-level Gaussian mechanism.

Charges are idempotent per (site, manifest, run, round, kind), so a restarted
coordinator re-recording a round does not double count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from coordinator import logger
from lifecycle.errors import ConfigurationError
from privacy.accountants import GaussianHistory
from privacy.ledger.base import Charge, PrivacyLedger
from privacy.site_dp import SiteDPPlan


@dataclass
class RunLedger:
    """Charges of one run; ``nodes`` maps Flower node ids to the site names they reported."""

    ledger: PrivacyLedger
    run_id: str
    site_plan: SiteDPPlan | None = None
    nodes: dict[int, str] = field(default_factory=dict)
    manifests: dict[str, str] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    per_round: dict[str, dict[str, GaussianHistory]] = field(default_factory=dict)

    def learn(self, node_id: int, site: ConfigRecord) -> None:
        """Map a node to its site and the per-round cost it declared (the pre-run identity query)."""
        name, manifest = str(site["name"]), str(site["manifest"])
        self.nodes[node_id] = name
        self.manifests[name] = manifest
        costs: dict[str, GaussianHistory] = {}
        if "noise-multiplier" in site and "steps-per-round" in site:
            costs["record"] = GaussianHistory(
                float(site["noise-multiplier"]), float(site["sample-rate"]),  # type: ignore[arg-type]
                int(site["steps-per-round"]), float(site["delta"]), str(site.get("accountant", "rdp")),  # type: ignore[arg-type]
            )
        if self.site_plan is not None:
            costs["site"] = self.site_plan.history(1)
        self.per_round[name] = costs

    def record_round(self, server_round: int, replies: list[Message]) -> None:
        """Charge each site that contributed to ``server_round`` (already released: not enforced)."""
        for reply in replies:
            site = reply.content.config_records.get("site")
            if site is None or "name" not in site or "manifest" not in site:
                continue
            name, manifest = str(site["name"]), str(site["manifest"])
            self.nodes[reply.metadata.src_node_id] = name
            self.manifests[name] = manifest
            charges = self._charges(server_round, name, manifest, site)
            for charge in charges:
                self.ledger.record(charge, actor="coordinator", enforce=False)
            self.per_round[name] = {c.kind: c.history() for c in charges}

    def _charges(self, server_round: int, name: str, manifest: str, site: ConfigRecord) -> list[Charge]:
        charges = []
        if "noise-multiplier" in site and "steps" in site:
            total = int(site["steps"])  # type: ignore[arg-type]
            new = total - self.steps.get(name, 0)
            self.steps[name] = total
            if new > 0:
                charges.append(Charge(
                    name, manifest, self.run_id, server_round, "record", float(site["noise-multiplier"]),  # type: ignore[arg-type]
                    float(site["sample-rate"]), new, float(site["delta"]),  # type: ignore[arg-type]
                    str(site.get("accountant", "rdp")),
                ))
        if self.site_plan is not None:
            c = self.site_plan.config
            charges.append(Charge(name, manifest, self.run_id, server_round, "site",
                                  self.site_plan.noise_multiplier, c.sample_rate, 1, c.delta, c.accountant))
        return charges

    def over_cap(self, node_id: int) -> bool:
        """Whether the site behind ``node_id`` would exceed a cap with another round like its last."""
        name = self.nodes.get(node_id)
        if name is None or name not in self.per_round:
            return False
        for kind, history in self.per_round[name].items():
            projection = self.ledger.project(name, self.manifests[name], kind, history)
            if not projection.allowed:
                logger.warning("privacy ledger: leaving out %s: projected %s ε=%.4g over its cap %.4g",
                               name, kind, projection.projected,
                               projection.cap.epsilon if projection.cap else float("nan"))
                return True
        return False

    def state(self) -> dict[str, dict[str, Any]]:
        """Per site: ε spent so far on its manifest (all runs composed), cap and remaining, per DP kind."""
        result: dict[str, dict[str, Any]] = {}
        for name, manifest in sorted(self.manifests.items()):
            rows = {}
            for row in self.ledger.summary(name):
                if row.manifest == manifest:
                    rows[row.kind] = {"epsilon": row.epsilon, "delta": row.delta, "runs": row.runs,
                                      "cap": row.epsilon_cap, "remaining": row.epsilon_remaining}
            result[name] = rows
        return result


def identify_sites(
    grid: Grid, config: ConfigRecord, run_ledger: RunLedger, *, expected: int, timeout: float,
    on_site: Callable[[ConfigRecord], None] | None = None,
) -> int:
    """Ask every connected site for its identity (a QUERY message); return how many answered.

    Waits up to ``timeout`` seconds for ``expected`` sites to connect.
    ``on_site`` also receives each answering site's record (the reference
    histograms are collected that way).
    """
    deadline = time.monotonic() + timeout
    node_ids = list(grid.get_node_ids())
    previous = -1
    while len(node_ids) < expected and time.monotonic() < deadline:
        if isinstance(grid, InMemoryGrid) and 0 < len(node_ids) == previous:  # simulation: no SuperNode joins later
            raise ConfigurationError(
                f"the simulation has {len(node_ids)} SuperNode(s) but the run needs num-sites = {expected}: "
                f"give the connection options.num-supernodes = {expected} ('fedguard flower config "
                f"--num-supernodes {expected}'), or run with --run-config 'num-sites={len(node_ids)}'")
        previous = len(node_ids)
        time.sleep(1.0)
        node_ids = list(grid.get_node_ids())
    query = ConfigRecord({**dict(config), "server-round": 0})
    messages = [
        Message(RecordDict({"config": query}), dst_node_id=node, message_type=MessageType.QUERY)
        for node in node_ids
    ]
    answered = 0
    for reply in grid.send_and_receive(messages, timeout=timeout):
        site = None if reply.has_error() else reply.content.config_records.get("site")
        if site is None:
            logger.warning("site identity query: node %d did not answer (%s)", reply.metadata.src_node_id,
                           reply.error.reason if reply.has_error() else "no site record")
            continue
        run_ledger.learn(reply.metadata.src_node_id, site)
        if on_site is not None:
            on_site(site)
        answered += 1
    return answered
