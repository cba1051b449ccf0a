"""The coordinator's side of the privacy ledger for one run: charge, project, leave out.

Before the first round the coordinator asks every connected site who it is
(:func:`identify_sites`: name, data manifest and the DP cost of one round —
public metadata). Before each round, a site whose next round would take it
past its cap is left out of the sampled set; the site's own ledger vetoes
independently (``privacy.ledger.guard``). After every aggregated round each
participating site is charged, in the persistent ledger of the registry
database, with exactly what the round cost it: the record-level DP-SGD steps
it reports (σ, q, new steps) and, under site-level DP, one step of the
site-level Gaussian mechanism, computed by
:func:`privacy.ledger.charges.round_charges` (the very function of the
site's veto). Every charge keys on the site's *enrolled* identity
(:mod:`coordinator.identity`), never on the name a reply carries: a node
whose reported name is not its own is refused for the run and never charged.

Charges are idempotent per (site, manifest, run, round, kind), so a restarted
coordinator re-recording a round does not double count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid

from coordinator import logger
from coordinator.identity import SiteIdentities
from coordinator.roster import gather
from federation.protocol import IdentityReply, ProtocolError, SiteReply
from privacy.accountants import GaussianHistory
from privacy.ledger.base import Charge, PrivacyLedger
from privacy.ledger.charges import DPReport, SiteLevelReport, round_charges
from privacy.site_dp import SiteDPPlan


@dataclass
class RunLedger:
    """Charges of one run; ``nodes`` maps Flower node ids to their sites' enrolled identities.

    ``identities`` (bound by the identify phase; until then the reported
    names) decides which name a node's contributions are charged to, and
    which nodes are refused for the run.
    """

    ledger: PrivacyLedger
    run_id: str
    site_plan: SiteDPPlan | None = None
    identities: SiteIdentities = field(default_factory=lambda: SiteIdentities("reported"))
    nodes: dict[int, str] = field(default_factory=dict)
    manifests: dict[str, str] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    per_round: dict[str, dict[str, GaussianHistory]] = field(default_factory=dict)
    left_out: set[int] = field(default_factory=set)  # nodes that refused the run before round 1

    def verify(self, node_id: int, reported: str | None) -> str | None:
        """The enrolled name ``node_id`` contributes under, or None: refused for the run (see ``identities``)."""
        return self.identities.verify(node_id, reported)

    def enrolled(self, node_id: int) -> str | None:
        """The node's enrolled identity (deployment, simulation), else the name it was identified under."""
        return self.identities.enrolled(node_id) or self.nodes.get(node_id)

    def refused(self, node_id: int) -> bool:
        """Whether ``node_id`` was refused for the run, or refused it (it must be left out of every round)."""
        return node_id in self.left_out or self.identities.refused(node_id)

    def leave_out(self, node_id: int) -> None:
        """Leave ``node_id`` out of every round: it refused the run before round 1 (``coordinator.roster``)."""
        self.left_out.add(node_id)

    def learn(self, node_id: int, name: str, site: IdentityReply) -> None:
        """Map a node to its enrolled site and the per-round cost it declared (the pre-run identity query)."""
        self.nodes[node_id] = name
        self.manifests[name] = site.manifest
        costs: dict[str, GaussianHistory] = {}
        if site.plan is not None:
            costs["record"] = site.plan.history()
        if self.site_plan is not None:
            costs["site"] = self.site_plan.history(1)
        self.per_round[name] = costs

    def record_round(self, server_round: int, replies: list[Message]) -> None:
        """Charge each site that contributed to ``server_round`` (already released: not enforced).

        Each reply is charged to its node's enrolled identity; a reply that
        names another site is never charged (the tracker refused it before
        aggregation already).
        """
        released: list[Charge] = []
        for reply in replies:
            try:
                site = SiteReply.of(reply)
            except ProtocolError as exc:
                logger.warning("privacy ledger: node %d sent a malformed site record (%s); not charged",
                               reply.metadata.src_node_id, exc)
                continue
            name = self.verify(reply.metadata.src_node_id, site.name) if site is not None else None
            if site is None or name is None:
                continue
            self.nodes[reply.metadata.src_node_id] = name
            self.manifests[name] = site.manifest
            charges = self._charges(server_round, name, site)
            released.extend(charges)
            self.per_round[name] = {c.kind: c.history() for c in charges}
        self.ledger.record_released(released, actor="coordinator")  # one transaction for the round

    def _charges(self, server_round: int, name: str, site: SiteReply) -> list[Charge]:
        """:func:`privacy.ledger.charges.round_charges`, the site's veto's function, with this run's plan."""
        plan = self.site_plan
        level = None if plan is None else SiteLevelReport(
            plan.noise_multiplier, plan.config.sample_rate, plan.config.delta, plan.config.accountant)
        report = DPReport(name, site.manifest, site.dp, level)
        charges = round_charges(report, run_id=self.run_id, server_round=server_round,
                                record_steps_before=self.steps.get(name, 0), site_sampling="aggregated")
        if site.dp is not None:
            self.steps[name] = site.dp.steps
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
    """Ask every connected site for its identity (a QUERY message); return how many were identified.

    Waits up to ``timeout`` seconds for ``expected`` sites, then raises
    :class:`lifecycle.errors.SitesUnavailableError` naming the missing ones
    (:func:`coordinator.roster.gather`, which the ServerApp calls with the
    run's site deadline and policy check). A node whose reported name is not
    its enrolled identity is refused for the run (``run_ledger.identities``)
    and left out of what follows. ``on_site`` also receives each identified
    site's record (the reference histograms are collected that way).
    """
    roster = gather(grid, config, run_ledger, needed=expected, deadline=timeout, query_timeout=timeout,
                    on_site=on_site)
    return len(roster.identified)
