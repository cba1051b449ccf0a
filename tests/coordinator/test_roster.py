"""Before round 1: wait for enough sites, name who is missing and why, refuse a job the sites would refuse.

The grid is a stand-in that answers identity queries with crafted replies and
lets sites "connect" as injected time passes: nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from coordinator.config import CoordinatorConfig
from coordinator.identity import SiteIdentities
from coordinator.ledger import RunLedger
from coordinator.roster import gather, policy_check
from federation.protocol import IdentityReply, SiteRefusal
from lifecycle.errors import ConfigurationError, SitesUnavailableError

M = "ab" * 32
NAMES = {1: "st-marys", 2: "guys", 3: "kings"}


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value, raising=False)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


class SiteGrid:
    """Nodes connect at given times; each answers the query with its identity, or with a refusal."""

    def __init__(self, clock: Clock, connects: Mapping[int, float], answers: Mapping[int, Any]) -> None:
        from flwr.serverapp import Grid

        Grid.register(SiteGrid)
        self.clock, self.connects, self.answers = clock, connects, answers
        self.asked: list[int] = []

    def get_node_ids(self) -> list[int]:
        return [node for node, at in self.connects.items() if at <= self.clock.t]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            self.asked.append(node)
            answer = self.answers.get(node, IdentityReply(NAMES[node], M, 10, None, True))
            if isinstance(answer, SiteRefusal):
                reply = Message(answer.to_error(2), reply_to=message)
            else:
                reply = Message(RecordDict({"site": answer.to_record()}), reply_to=message)
            replies.append(reply)
        return replies


def _ledger() -> RunLedger:
    identities = SiteIdentities("enrolled", lambda: dict(NAMES))
    return RunLedger(cast(Any, None), "run-1", identities=identities)


def _gather(grid: SiteGrid, clock: Clock, events: list[tuple[str, dict[str, Any]]], *, needed: int = 3,
            deadline: float = 60.0, withdrawn: tuple[str, ...] = (), **cfg: Any) -> Any:
    config = CoordinatorConfig.from_mapping({"num-sites": needed, **cfg})
    return gather(grid, ConfigRecord({"x": 1}), _ledger(), needed=needed, deadline=deadline, query_timeout=30.0,
                  enrolled=sorted(NAMES.values()), check=policy_check(config, withdrawn),
                  observer=lambda e, p: events.append((e, dict(p))), now=clock.now, sleep=clock.sleep)


def test_the_run_waits_for_a_late_site_and_says_which_one_it_waits_for() -> None:
    clock = Clock()
    grid = SiteGrid(clock, {1: 0.0, 2: 0.0, 3: 5.0}, {})
    events: list[tuple[str, dict[str, Any]]] = []
    roster = _gather(grid, clock, events)
    assert sorted(roster.identified) == ["guys", "kings", "st-marys"]
    waiting = [p for e, p in events if e == "waiting"]
    assert waiting == [{"identified": 2, "needed": 3, "missing": {"kings": "not connected"}}]  # once, not per poll
    assert sorted(grid.asked) == [1, 2, 3] and clock.t == pytest.approx(5.0)  # each node asked once


def test_at_the_deadline_every_missing_site_is_named_with_its_reason() -> None:
    clock = Clock()
    refusal = SiteRefusal("contract-mismatch", "schema lacks columns ['chol']")
    grid = SiteGrid(clock, {1: 0.0, 2: 0.0, 3: 1e9}, {2: refusal})
    events: list[tuple[str, dict[str, Any]]] = []
    with pytest.raises(SitesUnavailableError) as caught:
        _gather(grid, clock, events, deadline=20.0)
    message = str(caught.value)
    assert "needs 3 site(s) but 1 could take part" in message and "after waiting 20 s, site-deadline" in message
    assert "guys: schema lacks columns ['chol']" in message and "kings: not connected" in message
    assert "fedguard client start" in message and "align the sites' schemas" in message
    assert caught.value.exit_code == 9
    assert events[-1] == ("unavailable", {"identified": 1, "needed": 3, "missing": {
        "guys": "schema lacks columns ['chol']", "kings": "not connected"}})
    assert clock.t == pytest.approx(20.0)


def test_when_every_enrolled_site_has_answered_the_run_stops_without_waiting() -> None:
    clock = Clock()
    grid = SiteGrid(clock, {1: 0.0, 2: 0.0, 3: 0.0},
                    {3: SiteRefusal("data-invalid", "the site's data does not match its schema: a (type)")})
    with pytest.raises(SitesUnavailableError, match="every enrolled site has answered.*kings: the site's data"):
        _gather(grid, clock, [], deadline=600.0)
    assert clock.t == 0.0


def test_a_clear_job_that_protective_sites_would_refuse_is_refused_before_round_1() -> None:
    clock = Clock()
    grid = SiteGrid(clock, {1: 0.0, 2: 0.0, 3: 0.0},
                    {1: IdentityReply("st-marys", M, 10, None, require_protection=False)})
    with pytest.raises(SitesUnavailableError) as caught:
        _gather(grid, clock, [], **{"secure-aggregation": "none", "aggregation": "fedavg"})
    message = str(caught.value)
    assert "guys: the site sends only masked or encrypted updates" in message and "st-marys" not in message
    assert 'set secure-aggregation = "secagg+"' in message


def test_a_site_cap_below_the_jobs_epsilon_is_refused_before_round_1() -> None:
    clock = Clock()
    grid = SiteGrid(clock, {1: 0.0, 2: 0.0, 3: 0.0},
                    {3: IdentityReply("kings", M, 10, None, True, epsilon_cap=1.0)})
    with pytest.raises(SitesUnavailableError, match=r"kings: the site's record-level ε cap 1 is below the job's "
                                                    r"dp-epsilon 3"):
        _gather(grid, clock, [], **{"dp-epsilon": 3.0})


def test_a_refused_site_is_left_out_when_enough_others_take_part() -> None:
    clock = Clock()
    grid = SiteGrid(clock, {1: 0.0, 2: 0.0, 3: 0.0}, {3: SiteRefusal("budget-veto", "cap reached")})
    events: list[tuple[str, dict[str, Any]]] = []
    ledger = _ledger()
    config = CoordinatorConfig.from_mapping({"num-sites": 3, "min-sites": 3})
    roster = gather(grid, ConfigRecord({"x": 1}), ledger, needed=2, deadline=10.0, query_timeout=5.0,
                    enrolled=sorted(NAMES.values()), check=policy_check(config),
                    observer=lambda e, p: events.append((e, dict(p))), now=clock.now, sleep=clock.sleep)
    assert roster.summary() == {"sites": 2, "needed": 2, "names": ["guys", "st-marys"],
                                "refused": {"kings": "cap reached"}}
    assert ledger.refused(3) and not ledger.refused(1)  # left out of every round


def test_a_site_withdrawn_in_the_registry_is_refused_whatever_the_run_config_says() -> None:
    clock = Clock()
    grid = SiteGrid(clock, {1: 0.0, 2: 0.0, 3: 0.0}, {})
    with pytest.raises(SitesUnavailableError) as caught:
        _gather(grid, clock, [], withdrawn=("guys",))
    message = str(caught.value)
    assert "guys: the site withdrew its consent as a whole" in message
    assert "fedguard retrain NAME --without-withdrawn" in message and clock.t == 0.0
    roster = _gather(SiteGrid(clock, {1: 0.0, 2: 0.0, 3: 0.0}, {}), clock, [], needed=2, withdrawn=("guys",),
                     **{"secure-aggregation": "ckks", "he-public-context": "ctx"})
    assert sorted(roster.identified) == ["kings", "st-marys"] and roster.refused["guys"].code == "withdrawn"


class SimulatedGrid(SiteGrid):
    """A :class:`SiteGrid` that the roster takes for Flower's simulation (its ``inner`` is an InMemoryGrid)."""

    def __init__(self, clock: Clock, connects: Mapping[int, float]) -> None:
        from flwr.superlink.grid.inmemory_grid import InMemoryGrid

        super().__init__(clock, connects, {})
        self.inner = object.__new__(InMemoryGrid)  # only its type is read


def _gather_simulated(grid: SimulatedGrid, clock: Clock) -> Any:
    return gather(grid, ConfigRecord({"x": 1}), _ledger(), needed=3, deadline=600.0, query_timeout=30.0,
                  now=clock.now, sleep=clock.sleep)


def test_a_simulation_whose_supernodes_register_slowly_is_waited_for() -> None:
    """Flower registers a simulation's SuperNodes in its own thread: a pause below the settle time is not the end."""
    from coordinator.roster import SIMULATION_SETTLE

    clock = Clock()
    grid = SimulatedGrid(clock, {1: 0.0, 2: 0.0, 3: SIMULATION_SETTLE - 2})
    roster = _gather_simulated(grid, clock)
    assert roster.complete and sorted(grid.asked) == [1, 2, 3]


def test_a_simulation_with_too_few_supernodes_is_refused_once_their_count_settles() -> None:
    from coordinator.roster import SIMULATION_SETTLE

    clock = Clock()
    with pytest.raises(ConfigurationError, match="the simulation has 2 SuperNode.s. but the run needs num-sites = 3"):
        _gather_simulated(SimulatedGrid(clock, {1: 0.0, 2: 0.0}), clock)
    assert SIMULATION_SETTLE <= clock.t < SIMULATION_SETTLE + 2
