"""Which sites a run starts with: ask each connected site, wait for enough of them, name who is missing and why.

Before the first round the coordinator asks every connected node who it is
(a QUERY answered with :class:`federation.protocol.IdentityReply`). Each
answer is either an identified site (its enrolled name, data manifest, DP
cost, policy) or a refusal by name (:class:`federation.protocol.SiteRefusal`:
its data does not fit, its identity does not match, or its policy refuses the
job: a site that sends only protected updates refuses a
``secure-aggregation = "none"`` job, so that job is refused here, before
round 1, not in it). :func:`gather` waits until ``needed`` sites are
identified, emitting a ``waiting`` progress event whenever the picture
changes ("waiting for sites: 2 of 3, missing kings — not connected"; in
deployment the enrolled active sites are known, so a site that never
connected is named too), and raises
:class:`lifecycle.errors.SitesUnavailableError` (exit 9) naming every missing
site and its reason when the run's ``site-deadline`` passes, or at once when
every enrolled site has answered and too few can take part.

Time is injected (``now=``, ``sleep=``) so that tests wait for nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from coordinator import logger
from coordinator.config import CoordinatorConfig
from coordinator.reasons import UNNAMED, describe, reason_of
from federation.protocol import CONFIG_RECORD, IdentityReply, ProtocolError, SiteRefusal, identity_query
from lifecycle.errors import ConfigurationError, SitesUnavailableError
from privacy.records import config_record
from privacy.site_dp import SITE_RECORD

NOT_CONNECTED = "not connected"
SIMULATION_SETTLE = 15.0
"""Seconds a simulation's SuperNode count must stay below num-sites before the run is refused.

Flower's simulation engine registers its SuperNodes one by one in its own
thread while the ServerApp starts; with 1000 sites on busy cores the count
was seen to pause for over a second at 622, so one unchanged poll is not
"no SuperNode joins later".
"""
Observer = Callable[[str, Mapping[str, Any]], None]
PolicyCheck = Callable[[IdentityReply], SiteRefusal | None]

_FIXES = {
    "not-connected": "start the missing sites' agents ('fedguard client start') or raise site-deadline",
    "unprotected-refused": "these sites send only masked or encrypted updates: set secure-aggregation = "
                           "\"secagg+\" (or \"ckks\") in the job",
    "contract-mismatch": "align the sites' schemas with the federation's model (features, label, classes)",
    "data-invalid": "fix the sites' data files (each site's log lists the problems; "
                    "'fedguard client check' checks a file)",
    "budget-veto": "these sites' privacy caps do not allow the job: lower dp-epsilon or the number of rounds",
    "identity": "give each site agent its own enrolment bundle and site name",
    "no-answer": "check those sites' logs (a first answer slower than round-timeout needs a longer one)",
    "withdrawn": "these sites withdrew their consent: lower num-sites (and min-sites) by their number, or "
                 "'fedguard retrain NAME --without-withdrawn' to retrain a model without them",
    "consent-withdrawn": "these sites withdrew their consent: lower num-sites (and min-sites) by their number, or "
                         "'fedguard retrain NAME --without-withdrawn' to retrain a model without them",
}


def policy_check(cfg: CoordinatorConfig, withdrawn: Collection[str] = ()) -> PolicyCheck:
    """Refuse, by the policy a site declared, a site that would refuse this job in its first round.

    And a site that withdrew its consent as a whole: ``withdrawn`` (every
    such site in the registry, :func:`coordinator.withdrawals.registry_withdrawn_sites`,
    whatever the run config says) and those the job itself excludes
    (``excludes-withdrawals``, written by ``fedguard retrain``).
    """
    refused = frozenset(withdrawn) | cfg.withdrawn_sites

    def check(site: IdentityReply) -> SiteRefusal | None:
        if site.name in refused:  # the name is the enrolled identity here (Asker._file verified it)
            return SiteRefusal("withdrawn", "the site withdrew its consent as a whole; no run trains on it again "
                                            "(fedguard retrain leaves it out)")
        if cfg.secure_aggregation == "none" and site.require_protection:
            return SiteRefusal("unprotected-refused", "the site sends only masked or encrypted updates and the "
                                                      "job has secure-aggregation = \"none\"")
        cap = site.epsilon_cap
        if cfg.dp_epsilon > 0 and cap is not None and cfg.dp_epsilon > cap:
            return SiteRefusal("budget-veto", f"the site's record-level ε cap {cap:g} is below the job's "
                                              f"dp-epsilon {cfg.dp_epsilon:g}")
        return None

    return check


@dataclass
class Roster:
    """The sites of one run before round 1: identified, refused (with why), and the enrolled ones not seen."""

    needed: int
    enrolled: tuple[str, ...] = ()
    identified: dict[str, IdentityReply] = field(default_factory=dict)
    refused: dict[str, SiteRefusal] = field(default_factory=dict)
    silent: set[str] = field(default_factory=set)  # connected, asked, no answer yet (asked again)

    @property
    def complete(self) -> bool:
        return len(self.identified) >= self.needed

    @property
    def settled(self) -> bool:
        """Every enrolled site has answered (identified or refused): waiting longer changes nothing."""
        answered = set(self.identified) | set(self.refused)
        return bool(self.enrolled) and answered >= set(self.enrolled)

    def missing(self) -> dict[str, SiteRefusal]:
        """Every site not identified, by name: its refusal, or ``not connected`` for an enrolled one never seen."""
        out = dict(self.refused)
        for name in sorted(self.silent):
            if name not in self.identified and name not in out:
                out[name] = SiteRefusal("no-answer", "connected but did not answer the identity query "
                                                     "within round-timeout")
        for name in self.enrolled:
            if name not in self.identified and name not in out:
                out[name] = SiteRefusal("not-connected", NOT_CONNECTED)
        return dict(sorted(out.items()))

    def waiting(self) -> dict[str, Any]:
        """The ``waiting`` progress event's payload."""
        return {"identified": len(self.identified), "needed": self.needed,
                "missing": {name: refusal.message for name, refusal in self.missing().items()}}

    def summary(self) -> dict[str, Any]:
        """The ``identified`` stage event's payload (names and reasons; never node ids)."""
        return {"sites": len(self.identified), "needed": self.needed, "names": sorted(self.identified),
                "refused": {name: refusal.message for name, refusal in sorted(self.refused.items())}}

    def error(self, waited: float, *, settled: bool) -> SitesUnavailableError:
        """Why the run cannot start: every missing site, its reason, and what to do."""
        missing = self.missing()
        why = "; ".join(describe(name, refusal) for name, refusal in missing.items()) or \
            "no other site connected"
        when = "every enrolled site has answered" if settled else f"after waiting {waited:.0f} s, site-deadline"
        fixes = [_FIXES[code] for code in dict.fromkeys(r.code for r in missing.values()) if code in _FIXES]
        fixes.append("lower min-sites to start with fewer sites")
        return SitesUnavailableError(
            f"the run needs {self.needed} site(s) but {len(self.identified)} could take part ({when}): {why}. "
            f"To run it: {'; or '.join(fixes)}")


@dataclass
class Asker:
    """Asks nodes who they are and files each answer in a :class:`Roster` (one run's identify phase)."""

    grid: Grid
    config: ConfigRecord
    ledger: Any  # coordinator.ledger.RunLedger (it imports this module)
    roster: Roster
    check: PolicyCheck | None = None
    on_site: Callable[[ConfigRecord], None] | None = None
    asked: set[int] = field(default_factory=set)
    _unnamed: dict[int, int] = field(default_factory=dict)

    def ask(self, nodes: Sequence[int], timeout: float) -> None:
        """Query ``nodes`` (once each); file each answer; a node that does not answer is noted as silent."""
        query = identity_query(self.config)
        messages = [Message(RecordDict({CONFIG_RECORD: query}), dst_node_id=node, message_type=MessageType.QUERY)
                    for node in nodes]
        answered = set()
        self.asked.update(nodes)  # once: a node that does not answer within the timeout is stuck, not slow
        for reply in self.grid.send_and_receive(messages, timeout=timeout):
            node = int(reply.metadata.src_node_id)
            answered.add(node)
            self._file(node, reply)
        for node in set(nodes) - answered:
            self.roster.silent.add(self._name(node))

    def _name(self, node: int) -> str:
        name = self.ledger.enrolled(node)
        if name is not None:
            return str(name)
        number = self._unnamed.setdefault(node, len(self._unnamed) + 1)
        return f"{UNNAMED} #{number}"

    def _refuse(self, node: int, name: str, refusal: SiteRefusal) -> None:
        logger.warning("site identity query: %s", describe(name, refusal))
        self.roster.silent.discard(name)
        self.roster.refused[name] = refusal
        self.ledger.leave_out(node)

    def _file(self, node: int, reply: Message) -> None:
        record = None if reply.has_error() else config_record(reply.content, SITE_RECORD)
        if record is None:
            refusal = reason_of(reply.error) if reply.has_error() else SiteRefusal(
                "protocol", "the site answered without a site record; coordinator and site versions differ")
            self._refuse(node, self._name(node), refusal)
            return
        try:
            identity = IdentityReply.from_record(record)
        except ProtocolError as exc:
            logger.warning("site identity query: node %d answered a malformed record (%s)", node, exc)
            self._refuse(node, self._name(node), SiteRefusal(
                "protocol", "the site's identity reply is malformed; coordinator and site versions differ"))
            return
        name = self.ledger.verify(node, identity.name)
        if name is None:
            refusal = self.ledger.identities.refusals.get(node)
            who = refusal.enrolled if refusal is not None and refusal.enrolled else \
                f"{UNNAMED} (claiming '{identity.name}')"
            self._refuse(node, who, SiteRefusal("identity", refusal.reason if refusal else "identity refused"))
            return
        policy = self.check(identity) if self.check is not None else None
        if policy is not None:
            self._refuse(node, name, policy)
            return
        self.roster.silent.discard(name)
        self.ledger.learn(node, name, identity)
        self.roster.identified[name] = identity
        if self.on_site is not None:
            self.on_site(record)


def gather(
    grid: Grid, config: ConfigRecord, run_ledger: Any, *, needed: int, deadline: float, query_timeout: float,
    enrolled: Sequence[str] = (), check: PolicyCheck | None = None, observer: Observer | None = None,
    on_site: Callable[[ConfigRecord], None] | None = None, poll: float = 1.0,
    now: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
) -> Roster:
    """Identify the connected sites until ``needed`` are, or raise :class:`SitesUnavailableError` (module doc).

    ``deadline`` is how many seconds to wait for enough sites to connect and
    be identified (``site-deadline``); a connected site asked has
    ``query_timeout`` to answer (``round-timeout``: its first answer starts
    its ClientApp), even past the deadline.
    """
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    roster = Roster(needed, tuple(sorted(enrolled)))
    asker = Asker(grid, config, run_ledger, roster, check, on_site)
    start = now()
    end = start + deadline
    shown: dict[str, Any] | None = None
    seen, changed = -1, start
    simulated = isinstance(getattr(grid, "inner", grid), InMemoryGrid)
    while True:
        nodes = list(grid.get_node_ids())
        fresh = [node for node in nodes if node not in asker.asked]
        if fresh:  # a connected site gets the query timeout to answer, whatever is left of the deadline
            asker.ask(fresh, query_timeout)
        if roster.complete:
            return roster
        if len(nodes) != seen:
            changed = now()
        if simulated and 0 < len(nodes) < needed and (now() - changed >= SIMULATION_SETTLE or roster.settled):
            raise ConfigurationError(  # simulation: no SuperNode joins later
                f"the simulation has {len(nodes)} SuperNode(s) but the run needs num-sites = {needed}: give the "
                f"connection options.num-supernodes = {needed} ('fedguard flower config --num-supernodes "
                f"{needed}'), or run with --run-config 'num-sites={len(nodes)}'")
        seen = len(nodes)
        if roster.settled or now() >= end:
            if observer is not None:
                observer("unavailable", roster.waiting())
            raise roster.error(now() - start, settled=roster.settled)
        payload = roster.waiting()
        if payload != shown and observer is not None:
            observer("waiting", payload)
        shown = payload
        sleep(poll)
