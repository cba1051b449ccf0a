"""Keys drawn ahead: a site's next session's keys ride on its share-keys reply, and that session skips setup.

Each case runs a first session that asks for the keys (``keys_ahead``), then a second one that opens
with them, through the same site state machines, and checks what the protocol promises: the sum is
exact, no setup stage is run for a site with keys, each key pair serves one session, the commitment
still catches a forged seed, and a site without the named keys (restarted) refuses and is dropped.
Through the Flower adapters, the next session's share-keys stage rides on the unmask stage.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import FedAvg

from privacy.secagg import SecAggAbortedError, SecAggConfig, SecAggProtocolError
from privacy.secagg.client import SecAggClient
from privacy.secagg.messages import (
    MASKED_INPUT,
    NEXT_RECORD_KEY,
    RECORD_KEY,
    SETUP,
    SHARE_KEYS,
    UNMASK,
    AheadKeys,
    Header,
    ShareKeysReply,
    decode,
    header_of,
)
from privacy.secagg.strategy import SecAggPlusStrategy
from tests.privacy.secagg.apps import SHAPES, initial_arrays, make_client_app
from tests.privacy.secagg.harness import (
    Federation,
    LocalGrid,
    node_ids,
    random_payloads,
    unmask_with_a_forged_seed_share,
    wire,
)

CONFIG = SecAggConfig(num_sites=10, threshold=5, num_neighbours=8, clip_norm=1.0, max_weight=50.0)


def tolerance(n: int) -> float:
    return n * 0.5 / CONFIG.effective_scale + 1e-9


def _two_sessions(drop: dict[str, set[int]] | None = None, *, only: set[int] | None = None,
                  seed: int = 0) -> tuple[Federation, Federation]:
    """Session 1 asks for keys ahead; session 2 (same sites, new payloads) opens with them."""
    rng = np.random.default_rng(seed)
    ids = node_ids(10, seed)
    first = Federation(CONFIG, random_payloads(ids, 32, CONFIG, rng), keys_ahead=True)
    first.run()
    ahead = {n: k for n, k in first.server.next_keys.items() if only is None or n in only}
    second = Federation(CONFIG, random_payloads(ids, 32, CONFIG, rng), server_round=2, ahead=ahead,
                        sites=first.clients, drop=drop or {}, keys_ahead=True)
    return first, second


def _open(server: Any) -> None:
    """The setup stage of a session where every site drew its keys ahead: nobody to ask."""
    assert server.setup_requests() == {}
    server.receive_setup({})


def test_a_session_opened_with_keys_drawn_ahead_skips_setup_and_sums_exactly() -> None:
    first, second = _two_sessions()
    assert set(first.server.next_keys) == set(first.nodes)
    total = second.run()
    assert second.sent[SETUP] == {}  # no site was asked for a setup
    expected = sum(second.payloads.values())
    assert np.max(np.abs(total - expected)) <= tolerance(10)
    keys_used = {n: second.server.ahead[n].key_id for n in second.nodes}
    assert keys_used == {n: k.key_id for n, k in first.server.next_keys.items()} and len(set(keys_used.values())) == 10
    # the second session asked again: fresh keys, none equal to the ones it used
    assert set(second.server.next_keys) == set(second.nodes)
    assert not {k.key_id for k in second.server.next_keys.values()} & set(keys_used.values())
    assert not {k.mask_key for k in second.server.next_keys.values()} & {
        k.mask_key for k in first.server.next_keys.values()}


@pytest.mark.parametrize("stage", [SHARE_KEYS, MASKED_INPUT, UNMASK])
def test_dropouts_up_to_tolerance_with_keys_drawn_ahead(stage: str) -> None:
    """A dropped site's mask key is rebuilt and checked against the public key it drew ahead."""
    ids = node_ids(10, 1)
    gone = set(ids[3:3 + CONFIG.dropout_tolerance])
    _, second = _two_sessions({stage: gone}, seed=1)
    total = second.run()
    contributors = set(ids) - gone if stage != UNMASK else set(ids)
    assert set(second.server.survivors) == contributors
    expected = sum(second.payloads[n] for n in contributors)
    assert np.max(np.abs(total - expected)) <= tolerance(len(contributors))
    if stage == MASKED_INPUT:
        assert set(second.server.dropped) == gone  # their mask keys were rebuilt from shares


def test_mixed_session_runs_setup_only_for_sites_without_keys() -> None:
    ids = node_ids(10, 2)
    with_keys = set(ids[:6])
    _, second = _two_sessions(only=with_keys, seed=2)
    total = second.run()
    assert set(second.sent[SETUP]) == set(ids) - with_keys
    assert np.max(np.abs(total - sum(second.payloads.values()))) <= tolerance(10)


def test_a_site_without_the_named_keys_refuses_and_is_dropped() -> None:
    """A site restarted between rounds holds no keys: it refuses to open, the others complete."""
    ids = node_ids(10, 3)
    first, second = _two_sessions(seed=3)
    restarted = ids[4]
    second.clients[restarted] = SecAggClient(restarted)  # its state is gone
    second.server.receive_setup(second.answer(SETUP, second.server.setup_requests()))
    requests = second.server.share_keys_requests()
    with pytest.raises(SecAggProtocolError, match="this site holds none .*restarted"):
        second.clients[restarted].handle(wire(requests[restarted]))
    replies = {n: wire(second.clients[n].handle(wire(r))) for n, r in requests.items() if n != restarted}
    second.server.receive_share_keys(replies)
    s = second.server
    s.receive_masked_inputs({n: wire(second.clients[n].handle(wire(r), second.payloads[n]))
                             for n, r in s.masked_input_requests().items()})
    total = s.receive_unmask({n: wire(second.clients[n].handle(wire(r))) for n, r in s.unmask_requests().items()})
    assert restarted not in s.survivors
    assert np.max(np.abs(total - sum(second.payloads[n] for n in ids if n != restarted))) <= tolerance(9)
    del first


def test_keys_serve_one_session_only() -> None:
    """Opening a second session with the same keys is refused: the site dropped them when they opened."""
    first, second = _two_sessions(seed=4)
    second.run()
    node = second.nodes[0]
    reuse = Federation(CONFIG, second.payloads, server_round=3, ahead=first.server.next_keys, sites=second.clients)
    _open(reuse.server)
    request = reuse.server.share_keys_requests()[node]
    assert request.key_id == first.server.next_keys[node].key_id
    assert wire(request).nodes == tuple(second.nodes)
    assert wire(request).config.to_record_dict() == reuse.server.config.to_record_dict()  # type: ignore[union-attr]
    with pytest.raises(SecAggProtocolError, match="holds those of id"):
        second.clients[node].handle(wire(request))


def test_a_replayed_opening_is_refused() -> None:
    _, second = _two_sessions(seed=5)
    s = second.server
    _open(s)
    node = second.nodes[1]
    request = wire(s.share_keys_requests()[node])
    second.clients[node].handle(request)
    with pytest.raises(SecAggProtocolError, match="already answered: replayed"):
        second.clients[node].handle(request)


def test_setup_drops_keys_still_pending() -> None:
    first, _ = _two_sessions(seed=6)
    node = first.nodes[0]
    client = first.clients[node]
    assert "ahead-id" in client.to_record()
    fresh = Federation(CONFIG, first.payloads, server_round=2, sites=first.clients)
    client.handle(wire(fresh.server.setup_requests()[node]))
    assert not any(key.startswith("ahead") for key in client.to_record())


def test_a_forged_seed_share_still_fails_the_commitment() -> None:
    """The commitment binds the keys' id (there is no round id yet when they are drawn)."""
    _, second = _two_sessions(seed=7)
    s = second.server
    _open(s)
    s.receive_share_keys(second.answer(SHARE_KEYS, s.share_keys_requests()))
    s.receive_masked_inputs(second.answer(MASKED_INPUT, s.masked_input_requests()))
    with pytest.raises(SecAggAbortedError, match="do not rebuild the secret"):
        unmask_with_a_forged_seed_share(second)
    # keys the sites drew at this session's share-keys stage are fresh and unused: offered for the next session
    assert set(s.next_keys) == set(second.nodes)


def test_wire_form_of_keys_drawn_ahead() -> None:
    header = Header(SHARE_KEYS, bytes(range(16)), 2, 7)
    ahead = AheadKeys(b"i" * 16, b"c" * 32, b"m" * 32, b"s" * 32)
    reply = ShareKeysReply(header, {1: b"x"}, ahead)
    assert wire(reply) == reply
    record = reply.to_record()
    record["ahead"] = record["ahead"][:-1]  # type: ignore[index]
    with pytest.raises(SecAggProtocolError, match="must be 112 bytes"):
        decode(record)
    assert wire(dataclasses.replace(reply, ahead=None)).ahead is None


def test_malformed_keys_drawn_ahead_are_not_used() -> None:
    first, _ = _two_sessions(seed=8)
    node = first.nodes[0]
    bad = {**first.server.next_keys, node: dataclasses.replace(first.server.next_keys[node], mask_key=b"short")}
    second = Federation(CONFIG, first.payloads, server_round=2, ahead=bad, sites=first.clients)
    assert node not in second.server.ahead
    assert set(second.server.setup_requests()) == {node}


# ------------------------------------------------------------------ through the Flower adapters


def _stage(message: Message) -> str | None:
    record = message.content.config_records.get(RECORD_KEY)
    return header_of(record).stage if record is not None else None


class _Counting(LocalGrid):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stages: list[tuple[int, str | None]] = []
        self.sent: list[Message] = []

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        self.sent.extend(messages)
        self.stages.extend((int(m.metadata.group_id or 0), _stage(m)) for m in messages)
        return super().send_and_receive(messages, timeout=timeout)


def _vector(arrays: Any) -> np.ndarray:
    return np.concatenate([arrays[k].numpy().ravel() for k in SHAPES]).astype(np.float64)


def _federated(tmp_path: Path, keys_ahead: bool, restart: tuple[int, int] | None = None,
               rounds: int = 3) -> tuple[Any, _Counting]:
    config = SecAggConfig(num_sites=8, threshold=4, num_neighbours=6, clip_norm=10.0, max_weight=40.0)
    tmp_path.mkdir(exist_ok=True)
    grid = _Counting(make_client_app(str(tmp_path)), 8)
    if restart is not None:  # (round, node index): that site loses its state before the round's first message
        round_, index = restart
        node = grid.get_node_ids()[index]
        send = grid.send_and_receive

        def restarting(messages: Any, *, timeout: float | None = None) -> list[Message]:
            messages = list(messages)
            if messages and int(messages[0].metadata.group_id) == round_ and not grid.restarted:
                grid.contexts[node].state = RecordDict()
                grid.restarted = True
            return send(messages, timeout=timeout)

        grid.restarted = False  # type: ignore[attr-defined]
        grid.send_and_receive = restarting  # type: ignore[method-assign]
    strategy = SecAggPlusStrategy(FedAvg(fraction_evaluate=0.0), config, keys_ahead=keys_ahead)
    return strategy.start(grid=grid, initial_arrays=initial_arrays(), num_rounds=rounds), grid


def _openings(grid: _Counting) -> list[int]:
    return [int(m.metadata.group_id) for m in grid.sent if NEXT_RECORD_KEY in m.content]


def test_later_rounds_run_two_stages_and_match_the_four_stage_rounds(tmp_path: Path) -> None:
    ahead, grid = _federated(tmp_path / "a", keys_ahead=True)
    per_round, plain = _federated(tmp_path / "b", keys_ahead=False)
    assert np.max(np.abs(_vector(ahead.arrays) - _vector(per_round.arrays))) < 1e-5
    assert [r for r, stage in grid.stages if stage == SETUP] == [1] * 8  # only the first round set up
    assert [r for r, stage in grid.stages if stage == SHARE_KEYS] == [1] * 8  # later ones rode on unmask
    assert _openings(grid) == [1] * 8 + [2] * 8 + [3] * 8  # each unmask opened the next session
    assert len(grid.stages) == 8 * (4 + 2 + 2) and len(plain.stages) == 8 * 4 * 3
    assert not _openings(plain)


def test_a_site_restarted_between_rounds_misses_one_round_and_rejoins(tmp_path: Path) -> None:
    result, grid = _federated(tmp_path / "a", keys_ahead=True, restart=(2, 3))
    node = grid.get_node_ids()[3]
    rounds = {int(p.stem.split("-")[1]) for p in (tmp_path / "a").glob(f"{node}-*.json")}
    assert rounds == {1, 3}  # refused round 2's masked input (no session), set up afresh in round 3
    assert [r for r, stage in grid.stages if stage == SETUP] == [1] * 8 + [3]
    assert result.train_metrics_clientapp[2]["secagg-sites"] == 7
    assert result.train_metrics_clientapp[3]["secagg-sites"] == 8


def test_a_site_that_cannot_open_the_next_session_still_unmasks_this_one(tmp_path: Path) -> None:
    """Its keys drawn ahead are gone before round 1's unmask: round 1 still sums all 8, round 2 goes on without it."""
    config = SecAggConfig(num_sites=8, threshold=4, num_neighbours=6, clip_norm=10.0, max_weight=40.0)
    grid = _Counting(make_client_app(str(tmp_path)), 8)
    node = grid.get_node_ids()[5]
    send = grid.send_and_receive

    def losing_keys(messages: Any, *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        if messages and _stage(messages[0]) == UNMASK and int(messages[0].metadata.group_id) == 1:
            state = dict(grid.contexts[node].state["secagg"])
            grid.contexts[node].state["secagg"] = ConfigRecord(
                {k: v for k, v in state.items() if not k.startswith("ahead")})
        return send(messages, timeout=timeout)

    grid.send_and_receive = losing_keys  # type: ignore[method-assign]
    strategy = SecAggPlusStrategy(FedAvg(fraction_evaluate=0.0), config, keys_ahead=True)
    result = strategy.start(grid=grid, initial_arrays=initial_arrays(), num_rounds=3)
    unmasked = [r for r in grid.received if _stage(r) == UNMASK and r.metadata.src_node_id == node]
    assert unmasked and not unmasked[0].has_error() and NEXT_RECORD_KEY not in unmasked[0].content
    assert result.train_metrics_clientapp[1]["secagg-sites"] == 8
    assert result.train_metrics_clientapp[2]["secagg-sites"] == 7  # not asked: it shared no keys for round 2
    assert result.train_metrics_clientapp[3]["secagg-sites"] == 8  # set up afresh
    rounds = {int(p.stem.split("-")[1]) for p in tmp_path.glob(f"{node}-*.json")}
    assert rounds == {1, 3}


@pytest.mark.parametrize("in_advance", [True, False])
def test_a_session_opened_in_advance_keeps_the_round_floor_until_a_masked_input(in_advance: bool) -> None:
    """Opened during round 1's unmask, a round-2 session lets a round-1 retry in; opened as usual, it does not."""
    first, _ = _two_sessions(seed=9)
    node = first.nodes[0]
    client = first.clients[node]
    opening = Federation(CONFIG, first.payloads, server_round=2, ahead=first.server.next_keys, sites=first.clients)
    _open(opening.server)
    client.share_keys(wire(opening.server.share_keys_requests()[node]), in_advance=in_advance)  # type: ignore[arg-type]
    retry = Federation(CONFIG, first.payloads, server_round=1, sites=first.clients)
    request = wire(retry.server.setup_requests()[node])
    if in_advance:
        client.handle(request)  # the retry's session replaces the one opened in advance
    else:
        with pytest.raises(SecAggProtocolError, match="older than this site's latest round 2"):
            client.handle(request)
