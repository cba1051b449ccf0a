"""SecAgg+ protocol driven in memory: correctness, dropouts, aborts, tampering and replay."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifecycle.errors import TrainingError
from privacy import updates
from privacy.secagg import SecAggAbortedError, SecAggAuthenticationError, SecAggConfig, SecAggProtocolError
from privacy.secagg.messages import MASKED_INPUT, SETUP, SHARE_KEYS, UNMASK, Header, UnmaskRequest
from tests.privacy.secagg.harness import (
    STAGES,
    Federation,
    node_ids,
    random_payloads,
    unmask_with_a_forged_seed_share,
    wire,
)


def tolerance(config: SecAggConfig, n: int) -> float:
    return n * 0.5 / config.effective_scale + 1e-9


@st.composite
def federations(draw: st.DrawFn) -> tuple[SecAggConfig, dict[int, np.ndarray]]:
    n = draw(st.integers(3, 9))
    k = draw(st.sampled_from([k for k in range(2, n) if k % 2 == 0 or n % 2 == 0]))
    t = draw(st.integers(k // 2 + 1, k))
    clip = draw(st.sampled_from([0.1, 1.0, 5.0]))
    max_weight = draw(st.sampled_from([1.0, 10.0, 1000.0]))
    config = SecAggConfig(num_sites=n + draw(st.integers(0, 3)), threshold=t, num_neighbours=k,
                          clip_norm=clip, max_weight=max_weight).validate()
    dim = draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return config, random_payloads(node_ids(n, draw(st.integers(0, 1000))), dim, config, rng)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(federations())
def test_unmasked_sum_equals_plaintext_weighted_sum(case: tuple[SecAggConfig, dict[int, np.ndarray]]) -> None:
    """(a) Σ masked payloads, unmasked, = Σ [wΔ, w] within n/(2·scale); the FedAvg mean follows."""
    config, payloads = case
    total = Federation(config, payloads).run()
    expected = sum(payloads.values())
    assert np.max(np.abs(total - expected)) <= tolerance(config, len(payloads))
    mean = total[:-1] / total[-1]
    assert np.allclose(mean, expected[:-1] / expected[-1],
                       atol=2 * tolerance(config, len(payloads)) / expected[-1] * 10)


def test_masked_inputs_look_nothing_like_the_payloads() -> None:
    config = SecAggConfig(num_sites=6, threshold=3, num_neighbours=4, clip_norm=1.0, max_weight=10.0)
    payloads = random_payloads(node_ids(6), 200, config, np.random.default_rng(0))
    federation = Federation(config, payloads)
    federation.run()
    for node, reply in federation.sent[MASKED_INPUT].items():
        decoded = reply.masked.view(np.int32) / config.effective_scale
        assert np.corrcoef(decoded, payloads[node])[0, 1] < 0.3


CONFIG = SecAggConfig(num_sites=10, threshold=5, num_neighbours=8, clip_norm=1.0, max_weight=50.0)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("count", [1, CONFIG.dropout_tolerance])
def test_dropouts_up_to_tolerance_at_each_stage(stage: str, count: int) -> None:
    """(b) k − t sites dropping at any stage: the aggregate is the survivors' sum."""
    payloads = random_payloads(node_ids(10, 3), 64, CONFIG, np.random.default_rng(1))
    gone = set(sorted(payloads)[2:2 + count])
    federation = Federation(CONFIG, payloads, drop={stage: gone})
    total = federation.run()
    contributors = set(payloads) - gone if stage != UNMASK else set(payloads)
    assert set(federation.server.survivors) == contributors
    expected = sum(payloads[n] for n in contributors)
    assert np.max(np.abs(total - expected)) <= tolerance(CONFIG, len(contributors))
    if stage == MASKED_INPUT:
        assert set(federation.server.dropped) == gone


def test_dropouts_spread_over_stages() -> None:
    payloads = random_payloads(node_ids(10, 4), 32, CONFIG, np.random.default_rng(2))
    ids = sorted(payloads)
    drop = {SETUP: {ids[0]}, MASKED_INPUT: {ids[1]}, UNMASK: {ids[2]}}
    federation = Federation(CONFIG, payloads, drop=drop)
    total = federation.run()
    expected = sum(payloads[n] for n in ids if n not in (ids[0], ids[1]))
    assert np.max(np.abs(total - expected)) <= tolerance(CONFIG, 8)


def _neighbourhood_wipeout(stage: str) -> None:
    payloads = random_payloads(node_ids(10, 5), 16, CONFIG, np.random.default_rng(3))
    probe = Federation(CONFIG, payloads)
    victim = probe.nodes[0]
    gone = set(probe.server.graph[victim][: CONFIG.dropout_tolerance + 1])
    federation = Federation(CONFIG, payloads, drop={stage: gone})
    federation.server.round_id = probe.server.round_id  # same graph
    federation.server.graph = probe.server.graph
    with pytest.raises(TrainingError) as raised:
        federation.run()
    assert isinstance(raised.value, SecAggAbortedError)
    assert "aborted" in str(raised.value) and f"t={CONFIG.threshold}" in str(raised.value)
    assert federation.server._sum is None or federation.server.stage != "done"


@pytest.mark.parametrize("stage", STAGES)
def test_more_dropouts_than_tolerance_abort_loudly(stage: str) -> None:
    """(c) k − t + 1 of one site's neighbours gone: TrainingError with the numbers, no aggregate."""
    _neighbourhood_wipeout(stage)


def test_fewer_survivors_than_threshold_abort() -> None:
    config = SecAggConfig(num_sites=5, threshold=3, num_neighbours=4, clip_norm=1.0, max_weight=5.0)
    payloads = random_payloads(node_ids(5, 6), 8, config, np.random.default_rng(4))
    gone = set(sorted(payloads)[:3])
    with pytest.raises(SecAggAbortedError, match=r"2 of 5 sites remain, fewer than the threshold t=3"):
        Federation(config, payloads, drop={MASKED_INPUT: gone}).run()


# ------------------------------------------------------------------ tampering and replay
def _federation(tamper=None) -> Federation:  # type: ignore[no-untyped-def]
    config = SecAggConfig(num_sites=6, threshold=3, num_neighbours=4, clip_norm=1.0, max_weight=5.0)
    payloads = random_payloads(node_ids(6, 7), 8, config, np.random.default_rng(5))
    return Federation(config, payloads, tamper=tamper)


def test_tampered_share_ciphertext_is_rejected() -> None:
    def flip(stage, node, request):  # type: ignore[no-untyped-def]
        if stage == MASKED_INPUT and node == victim[0]:
            sender = next(iter(request.ciphertexts))
            altered = bytearray(request.ciphertexts[sender])
            altered[20] ^= 1
            return dataclasses.replace(request, ciphertexts={**request.ciphertexts, sender: bytes(altered)})
        return request

    victim: list[int] = []
    federation = _federation(flip)
    victim.append(federation.nodes[0])
    with pytest.raises(SecAggAuthenticationError, match="failed authentication"):
        federation.run()


def test_ciphertext_moved_to_another_pair_is_rejected() -> None:
    def swap(stage, node, request):  # type: ignore[no-untyped-def]
        if stage == MASKED_INPUT and node == federation.nodes[0]:
            a, b = sorted(request.ciphertexts)[:2]
            cts = dict(request.ciphertexts)
            cts[a], cts[b] = cts[b], cts[a]
            return dataclasses.replace(request, ciphertexts=cts)
        return request

    federation = _federation(swap)
    with pytest.raises(SecAggAuthenticationError, match="another pair, round or stage"):
        federation.run()


def test_replayed_stage_is_refused() -> None:
    federation = _federation()
    server, node = federation.server, federation.nodes[0]
    server.receive_setup(federation.answer(SETUP, server.setup_requests()))
    requests = server.share_keys_requests()
    federation.answer(SHARE_KEYS, requests)
    with pytest.raises(SecAggProtocolError, match="out of order.*replayed"):
        federation.clients[node].handle(wire(requests[node]))


def test_replayed_setup_is_refused() -> None:
    federation = _federation()
    requests = federation.server.setup_requests()
    node = federation.nodes[1]
    federation.clients[node].handle(wire(requests[node]))
    with pytest.raises(SecAggProtocolError, match="already answered: replayed"):
        federation.clients[node].handle(wire(requests[node]))


def test_message_for_another_round_is_refused() -> None:
    federation = _federation()
    server = federation.server
    server.receive_setup(federation.answer(SETUP, server.setup_requests()))
    node = federation.nodes[2]
    request = server.share_keys_requests()[node]
    stale = dataclasses.replace(request, header=dataclasses.replace(request.header, round_id=bytes(16)))
    with pytest.raises(SecAggProtocolError, match="belongs to no round"):
        federation.clients[node].handle(stale)


def test_setup_older_than_latest_round_is_refused() -> None:
    federation = _federation()
    node = federation.nodes[0]
    client = federation.clients[node]
    client.handle(wire(federation.server.setup_requests()[node]))
    old = Federation(federation.config, federation.payloads, server_round=0).server.setup_requests()[node]
    with pytest.raises(SecAggProtocolError, match="older than this site's latest round"):
        client.handle(wire(old))


def test_request_for_another_node_is_refused() -> None:
    federation = _federation()
    requests = federation.server.setup_requests()
    a, b = federation.nodes[:2]
    with pytest.raises(SecAggProtocolError, match="addressed to another node"):
        federation.clients[a].handle(wire(requests[b]))


def test_client_never_reveals_both_secrets_of_a_node() -> None:
    federation = _federation()
    s = federation.server
    s.receive_setup(federation.answer(SETUP, s.setup_requests()))
    s.receive_share_keys(federation.answer(SHARE_KEYS, s.share_keys_requests()))
    s.receive_masked_inputs(federation.answer(MASKED_INPUT, s.masked_input_requests()))
    node = federation.nodes[0]
    greedy = UnmaskRequest(Header(UNMASK, s.round_id, s.server_round, node), s.survivors, s.survivors[1:2])
    with pytest.raises(SecAggProtocolError, match="both as survivors and as dropped"):
        federation.clients[node].handle(greedy)


def test_server_rejects_stale_duplicate_and_malformed_replies() -> None:
    federation = Federation(CONFIG, random_payloads(node_ids(10, 9), 8, CONFIG, np.random.default_rng(7)))
    s = federation.server
    replies = federation.answer(SETUP, s.setup_requests())
    a, b = federation.nodes[:2]
    replies[a] = dataclasses.replace(replies[a], header=dataclasses.replace(replies[a].header, round_id=bytes(16)))
    replies[b] = dataclasses.replace(replies[b], header=dataclasses.replace(replies[b].header, node_id=a))
    s.receive_setup(replies)
    assert "another round" in s.rejections[a] and "replayed" in s.rejections[a]
    assert "claims to be from node" in s.rejections[b]
    assert a not in s.advertised and b not in s.advertised


def test_server_rejects_masked_vector_of_wrong_shape() -> None:
    federation = _federation()
    s = federation.server
    s.receive_setup(federation.answer(SETUP, s.setup_requests()))
    s.receive_share_keys(federation.answer(SHARE_KEYS, s.share_keys_requests()))
    replies = federation.answer(MASKED_INPUT, s.masked_input_requests())
    node = federation.nodes[0]
    replies[node] = dataclasses.replace(replies[node], masked=replies[node].masked[:-1])
    s.receive_masked_inputs(replies)
    assert node not in s.survivors and "uint32 vector of length" in s.rejections[node]


def test_altered_unmask_share_aborts_instead_of_returning_garbage() -> None:
    federation = _federation()
    s = federation.server
    s.receive_setup(federation.answer(SETUP, s.setup_requests()))
    s.receive_share_keys(federation.answer(SHARE_KEYS, s.share_keys_requests()))
    s.receive_masked_inputs(federation.answer(MASKED_INPUT, s.masked_input_requests()))
    # the forged share must be among the first t used: the helper puts its holder first
    with pytest.raises(SecAggAbortedError, match="do not rebuild the secret|altered or forged"):
        unmask_with_a_forged_seed_share(federation)


def test_apply_payload_sum_gives_fedavg() -> None:
    config = SecAggConfig(num_sites=5, threshold=3, num_neighbours=4, clip_norm=1.0, max_weight=100.0)
    payloads = random_payloads(node_ids(5, 8), 12, config, np.random.default_rng(6))
    total = Federation(config, payloads).run()
    from flwr.app import Array, ArrayRecord

    global_ = ArrayRecord({"w": Array(np.zeros((3, 4), np.float32))})
    new, weight = updates.apply_payload_sum(total, global_)
    expected = sum(payloads.values())
    assert weight == pytest.approx(expected[-1], abs=1e-3)
    assert np.allclose(new["w"].numpy().ravel(), expected[:-1] / expected[-1], atol=1e-5)
