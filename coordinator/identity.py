"""Who each node is: the site's enrolled identity, never the name it reports about itself.

The privacy ledger, the lineage and the ML-BOM key on a site's name; a name
a site reports about itself (``site-name`` in its node config) is only a
claim. :class:`SiteIdentities` binds each Flower node id to the identity the
transport authenticated, and refuses, for the whole run, a node whose
reported name is not that identity: it is left out of every round, never
charged and never in the lineage, and the refusal is audited
(``site.identity-mismatch``).

Where the identity comes from:

* **deployment** (``enrolled``): the SuperLink authenticates every SuperNode
  by its node public key (``--enable-supernode-auth``), and fedguard
  registered exactly the node keys of its enrolled sites
  (``coordinator.superlink.sync_nodes``). The ServerApp's grid lists each
  node with the public key it authenticated (``Grid.get_nodes()``); the site
  registry maps that key to the enrolment it was issued for. A key that is
  no active credential has no identity: its node is refused.
* **simulation** (``simulated``): Flower's simulation engine registers one
  node per virtual site, in partition order, and gives each its
  ``partition-id``; the virtual site's identity is ``site-<partition>``,
  the name its data file and the sites' default name use.
* **development** (``reported``): a SuperLink without node authentication
  (``coordinator start --insecure``, or a grid that lists no keys and a
  registry with no enrolled site) authenticates nobody; the reported names
  are then used as they are, and the run says so in its log.

``FEDGUARD_SITE_IDENTITY`` (``enrolled`` or ``reported``), set by
:class:`coordinator.deployment.CoordinatorService` for its SuperLink and so
for the ServerApps it runs, decides in deployment; without it a registry
that has enrolled sites means ``enrolled``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from flwr.serverapp import Grid

from coordinator import logger
from coordinator.provisioning.sites import node_keys
from lifecycle import audit
from lifecycle.errors import ConfigurationError
from lifecycle.registry import Registry

IDENTITY_ENV = "FEDGUARD_SITE_IDENTITY"
MODES = ("enrolled", "simulated", "reported")
MISMATCH = "site.identity-mismatch"


@dataclass(frozen=True)
class IdentityRefusal:
    """One node refused for a run: what it claimed, who it is (None: no enrolled identity)."""

    node_id: int
    reported: str
    enrolled: str | None
    reason: str


Lookup = Callable[[], Mapping[int, str | None]]


@dataclass
class SiteIdentities:
    """The enrolled identity of each node of one run, and the nodes refused (see the module docstring)."""

    mode: str
    lookup: Lookup | None = None
    on_refuse: Callable[[IdentityRefusal], None] | None = None
    known: dict[int, str | None] = field(default_factory=dict)
    refusals: dict[int, IdentityRefusal] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigurationError(f"site identity mode '{self.mode}': choose one of {', '.join(MODES)}")

    def enrolled(self, node_id: int) -> str | None:
        """The node's enrolled identity (looked up again for a node not seen before); None when it has none."""
        if node_id not in self.known and self.lookup is not None:
            self.known.update(self.lookup())
        return self.known.get(node_id)

    def refused(self, node_id: int) -> bool:
        return node_id in self.refusals

    def verify(self, node_id: int, reported: str | None) -> str | None:
        """The name to key ``node_id``'s contribution on, or None: the node is refused for the run.

        ``reported`` is the name the node's reply carries (None: it named none).
        """
        if node_id in self.refusals:
            return None
        if self.mode == "reported":
            return reported if reported else f"node-{node_id}"
        enrolled = self.enrolled(node_id)
        if enrolled is not None and reported == enrolled:
            return enrolled
        if enrolled is None:
            reason = "its node key belongs to no enrolled site" if self.mode == "enrolled" else "it is no virtual site"
        else:
            reason = f"it reported the name '{reported}' but is enrolled as '{enrolled}'"
        self._refuse(IdentityRefusal(node_id, reported or "", enrolled, reason))
        return None

    def _refuse(self, refusal: IdentityRefusal) -> None:
        self.refusals[refusal.node_id] = refusal
        logger.error("site identity: node %d refused for this run: %s", refusal.node_id, refusal.reason)
        if self.on_refuse is not None:
            self.on_refuse(refusal)


def enrolled_keys(registry: Registry) -> dict[str, str] | None:
    """``node public key PEM → site`` of every active enrolled credential; None if the registry has none."""
    keys = node_keys(registry)
    if not keys:
        return None
    return {pem.strip(): name for name, active, pem in keys if active}


def expected_sites(identities: SiteIdentities, registry: Registry) -> tuple[str, ...]:
    """The sites that may take part, by name, so that one never connected can be named (``reported``: none)."""
    if identities.mode == "simulated" and identities.lookup is not None:
        return tuple(sorted({name for name in identities.lookup().values() if name}))
    if identities.mode == "enrolled":
        keys = enrolled_keys(registry)
        return tuple(sorted(set(keys.values()))) if keys else ()
    return ()


def registry_lookup(grid: Grid, keys: Mapping[str, str]) -> Lookup:
    """Node id → enrolled site, from the public keys the SuperLink authenticated (``grid.get_nodes()``)."""

    def lookup() -> dict[int, str | None]:
        found: dict[int, str | None] = {}
        for node in grid.get_nodes():
            pem = bytes(node.public_key).decode(errors="replace").strip()
            found[int(node.node_id)] = keys.get(pem)
        return found

    return lookup


def simulation_lookup(grid: Grid) -> Lookup | None:
    """Node id → ``site-<partition>`` in Flower's simulation engine; None for any other grid.

    The engine registers its nodes one after the other, partition 0 first
    (``flwr.server.superlink.fleet.vce.vce_api._register_nodes``), in its
    in-memory link state, whose node table keeps that order.
    """
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    if not isinstance(grid, InMemoryGrid):
        return None
    state = grid.state

    def lookup() -> dict[int, str | None]:
        return {int(node.node_id): f"site-{partition}" for partition, node in enumerate(state.get_node_info())}

    return lookup


def audit_refusals(registry: Registry, run_id: str) -> Callable[[IdentityRefusal], None]:
    """An ``on_refuse`` that appends a ``site.identity-mismatch`` event (subject: the name claimed)."""

    def on_refuse(refusal: IdentityRefusal) -> None:
        with registry.transaction() as session:
            audit.record(session, MISMATCH, actor="coordinator", subject=refusal.reported, details={
                "run": run_id, "node": str(refusal.node_id), "enrolled": refusal.enrolled,
                "reason": refusal.reason,
            })

    return on_refuse


def site_identities(grid: Grid, registry: Registry, run_id: str,
                    environ: Mapping[str, str] | None = None) -> SiteIdentities:
    """The identities of this run's nodes (mode chosen as the module docstring says), refusals audited."""
    on_refuse = audit_refusals(registry, run_id)
    inner = getattr(grid, "inner", grid)  # coordinator.grid.ResponsiveGrid
    simulated = simulation_lookup(inner)
    if simulated is not None:
        return SiteIdentities("simulated", simulated, on_refuse)
    wanted = (os.environ if environ is None else environ).get(IDENTITY_ENV, "")
    if wanted and wanted not in ("enrolled", "reported"):
        raise ConfigurationError(f"{IDENTITY_ENV}={wanted!r}: use 'enrolled' or 'reported'")
    keys = enrolled_keys(registry) if wanted != "reported" else None
    if wanted == "enrolled" and keys is None:
        raise ConfigurationError("node authentication is on but the registry has no enrolled site: "
                                 "enrol the sites ('fedguard site enroll NAME') before running")
    if keys is None:
        logger.warning("site identities are the names sites report (no node authentication, no enrolled "
                       "site): development only; deploy with node authentication to bind them")
        return SiteIdentities("reported", None, on_refuse)
    return SiteIdentities("enrolled", registry_lookup(grid, keys), on_refuse)
