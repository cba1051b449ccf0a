"""A site is its enrolled identity: an agent reporting another site's name is refused and audited.

Two runs of the real coordinator and ClientApp, where the agent of one site
is configured with another site's name:

* in-process, over a grid that lists each node with the public key it
  authenticated with (as the SuperLink does under ``--enable-supernode-auth``),
  the sites enrolled in the registry (``enrolled`` identities);
* in Flower's simulation engine on Ray (``simulated`` identities: the
  engine's node of partition ``i`` is ``site-<i>``).

Either way the impostor is left out of every round, never charged and never
in the lineage, the site whose name it took keeps exactly its own charges,
and the audit trail names what happened.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.proto.node_pb2 import NodeInfo
from sqlmodel import select

from client.app import make_client_app
from coordinator.app import run_federation
from coordinator.config import CoordinatorConfig
from coordinator.identity import IDENTITY_ENV, MISMATCH, SiteIdentities, site_identities
from coordinator.provisioning import SiteRegistry, init_federation
from lifecycle.errors import ConfigurationError
from lifecycle.home import Home
from lifecycle.registry import Registry
from lifecycle.registry.tables import AuditEvent
from privacy.ledger import SiteLedger, coordinator_ledger
from simulations.federation import SimulationConfig, _engine_environment, _simulate, prepare_data
from tests.client.test_outgoing import _write_federation
from tests.privacy.secagg.harness import LocalGrid

ROUNDS = 2


class KeyedGrid(LocalGrid):
    """A LocalGrid whose nodes carry the node public keys the transport authenticated."""

    keys: dict[int, bytes]

    def get_nodes(self) -> Iterator[NodeInfo]:
        return (NodeInfo(node_id=node, public_key=self.keys.get(node, b"")) for node in self.get_node_ids())


def _events(registry: Registry) -> list[AuditEvent]:
    with registry.transaction() as session:
        return list(session.exec(select(AuditEvent).where(AuditEvent.action == MISMATCH)).all())


def test_identities_refuse_a_wrong_name_and_an_unknown_node_for_the_whole_run() -> None:
    refused: list[int] = []
    identities = SiteIdentities("enrolled", lambda: {1: "a", 2: "b", 3: None},
                                lambda refusal: refused.append(refusal.node_id))
    assert identities.verify(1, "a") == "a"
    assert identities.verify(2, "a") is None and identities.refused(2)
    assert identities.verify(2, "b") is None  # refused for the run, even with its true name now
    assert identities.verify(3, "c") is None and identities.verify(4, "d") is None  # no enrolled identity
    assert refused == [2, 3, 4] and identities.enrolled(2) == "b"
    assert SiteIdentities("reported").verify(5, "anything") == "anything"
    with pytest.raises(ConfigurationError):
        SiteIdentities("trust-me")


def test_the_mode_follows_node_authentication(registry: Registry, fedguard_home: Path) -> None:
    grid = KeyedGrid(make_client_app(), 1)
    grid.keys = {}
    assert site_identities(grid, registry, "r", {}).mode == "reported"  # nothing enrolled: development
    with pytest.raises(ConfigurationError, match="no enrolled site"):
        site_identities(grid, registry, "r", {IDENTITY_ENV: "enrolled"})
    SiteRegistry(registry, init_federation(fedguard_home, "cardio")).enroll("a", fedguard_home / "a.bundle")
    assert site_identities(grid, registry, "r", {}).mode == "enrolled"
    assert site_identities(grid, registry, "r", {IDENTITY_ENV: "reported"}).mode == "reported"  # --insecure


def test_an_enrolled_site_reporting_another_name_is_refused_and_the_other_ledger_untouched(
    fedguard_home: Path, tmp_path: Path, registry: Registry
) -> None:
    coordinator, sites, configs = _write_federation(tmp_path)  # hospital-0..2, each with its own site ledger
    sites_registry = SiteRegistry(registry, init_federation(fedguard_home, "cardio"))
    grid = KeyedGrid(make_client_app(require_protection=False), len(sites))
    grid.keys = {}
    for node, name in zip(grid.get_node_ids(), sites, strict=True):
        bundle = sites_registry.enroll(name, tmp_path / f"{name}.bundle")
        grid.keys[node] = bundle.node_public_key.encode()
        config = dict(configs[name])
        if name == "hospital-1":
            config["site-name"] = "hospital-0"  # the impostor: enrolled as hospital-1, says it is hospital-0
        grid.contexts[node] = Context(run_id=1, node_id=node, node_config=config, state=RecordDict(), run_config={})
    cfg = CoordinatorConfig.from_mapping({
        "num-server-rounds": ROUNDS, "num-sites": 3, "min-sites": 2, "local-epochs": 1,
        "data-dir": str(coordinator), "watermark": "none", "secure-aggregation": "none", "round-timeout": 30.0,
        "model-name": "identity-test", "dp-epsilon": 0.0, "site-epsilon": 2.0,  # site-level DP: cheap charges
    })
    outcome = run_federation(grid, cfg, lambda event, payload: None)
    _check_refused(outcome, registry, impostor="hospital-1", victim="hospital-0", honest={"hospital-0", "hospital-2"})
    ledgers = {name: SiteLedger.open(tmp_path / name / "ledger.db") for name in sites}
    assert ledgers["hospital-1"].charges() == []  # the impostor never trained: its own ledger saw nothing
    assert {c.site for c in ledgers["hospital-0"].charges()} == {"hospital-0"}  # the victim's: its own only
    assert len(ledgers["hospital-0"].charges()) == 1  # the declared site-level plan, charged once


def _check_refused(outcome: Mapping[str, Any], registry: Registry, *, impostor: str, victim: str,
                   honest: set[str]) -> None:
    """Left out of every round, never charged, not in the lineage or the BOM; audited once."""
    assert set(outcome["epsilon"]) == set(outcome["site_epsilon"]) == honest
    assert [entry["sites"] for entry in outcome["history"]] == [len(honest)] * ROUNDS
    ledger = coordinator_ledger(registry)
    charges = ledger.charges()
    assert {c.site for c in charges} == honest and not ledger.charges(impostor)
    assert sorted(c.round for c in ledger.charges(victim)) == list(range(1, ROUNDS + 1))  # its own rounds only
    version = registry.get_version(outcome["model"])
    assert {s.site for s in version.sites} == honest
    (event,) = _events(registry)
    details = json.loads(event.details_json)
    assert (event.subject, details["enrolled"]) == (victim, impostor)
    assert f"is enrolled as '{impostor}'" in details["reason"]


class ClaimName:
    """A site-agent mod that sets ``site-name`` of one virtual site to another's (module level: Ray pickles it)."""

    def __init__(self, partition: int, name: str) -> None:
        self.partition, self.name = partition, name

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if int(context.node_config.get("partition-id", -1)) == self.partition:
            context.node_config["site-name"] = self.name
        return call_next(msg, context)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.usefixtures("shared_ray")  # one Ray head per test process, not one per run
def test_a_virtual_site_reporting_another_name_is_refused_in_simulation(fedguard_home: Path, tmp_path: Path,
                                                                       registry: Registry) -> None:
    cfg = SimulationConfig(sites=3, rounds=ROUNDS, local_epochs=1, dp_epsilon=0.0, site_epsilon=2.0,
                           watermark="none", secure_agg="none", model_name="sim-identity")
    prepared = prepare_data(cfg, tmp_path / "data")
    _engine_environment(Home(fedguard_home).ensure())
    overrides = {**cfg.coordinator_overrides(prepared.data_dir, tmp_path / "out.json"), "min-sites": 2}
    outcome: dict[str, Any] = {}
    _simulate(overrides, lambda event, payload: None, outcome, cfg, False, mods=[ClaimName(1, "site-0")])
    _check_refused(outcome, registry, impostor="site-1", victim="site-0", honest={"site-0", "site-2"})
