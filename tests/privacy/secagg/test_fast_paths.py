"""The faster code paths give exactly what the straightforward ones gave.

Known answers against ``cryptography``'s own HKDF, Flower's ``Array.numpy()`` and the three-step
payload (``model_delta`` → ``clip`` → ``weighted_payload``); the int32 quantization against the
int64 one; and the batched key agreements against the one-pair functions.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.app import Array, ArrayRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy import updates
from privacy.secagg import SecAggConfigError, keys
from privacy.secagg.messages import SetupRequest, decode, header_of
from privacy.secagg.prg import MaskExpander
from privacy.secagg.quantization import quantize

SETTINGS = settings(max_examples=30, deadline=None)


@SETTINGS
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=0, max_size=120))
def test_hkdf_matches_cryptography(secret: bytes, info: bytes) -> None:
    assert keys.hkdf_sha256(secret, info) == HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(secret)


def test_batched_agreements_match_the_pairwise_ones() -> None:
    me, round_id = 7, os.urandom(16)
    mine = keys.KeyPair.generate()
    peers = {j: keys.KeyPair.generate() for j in (3, 11, 12)}
    assert mine.public == keys.public_of(mine.private)
    seeds = keys.mask_seeds(mine.private, {j: p.public for j, p in peers.items()}, round_id, me)
    channels = keys.channel_keys(mine.private, {j: p.public for j, p in peers.items()}, round_id, me)
    for j, pair in peers.items():
        assert seeds[j] == keys.mask_seed(mine.private, pair.public, round_id, me, j)
        assert seeds[j] == keys.mask_seed(pair.private, mine.public, round_id, j, me)  # both ends agree
        assert channels[j] == keys.channel_key(mine.private, pair.public, round_id, me, j) != seeds[j]


@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.float32).reshape(3, 4), np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    np.zeros(0, np.uint32), np.array(5.0), np.arange(10, dtype=">i4"), np.arange(7, dtype=np.uint32),
])
def test_array_view_equals_array_numpy_and_is_read_only(array: np.ndarray) -> None:
    wrapped = Array(array)
    view = updates.array_view(wrapped)
    assert view.dtype == wrapped.numpy().dtype and view.shape == array.shape and np.array_equal(view, array)
    assert not view.flags.writeable or view.size == 0


def test_array_view_of_malformed_data_raises_like_numpy() -> None:
    broken = Array(dtype="float32", shape=(3,), stype="numpy.ndarray", data=b"not an npy file")
    with pytest.raises(ValueError):
        updates.array_view(broken)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.floats(0.01, 10.0), st.floats(0.5, 50.0))
def test_clipped_payload_equals_the_three_steps(seed: int, bound: float, weight: float) -> None:
    rng = np.random.default_rng(seed)
    shapes = {"w": (5, 3), "b": (3,)}
    global_ = ArrayRecord({k: Array(rng.normal(size=s).astype(np.float32)) for k, s in shapes.items()})
    local = ArrayRecord({k: Array((global_[k].numpy() + rng.normal(scale=rng.uniform(0.01, 5), size=s))
                                  .astype(np.float32)) for k, s in shapes.items()})
    expected = updates.weighted_payload(updates.clip(updates.model_delta(local, global_), bound)[0], weight)
    payload, norm = updates.clipped_payload(local, global_, bound, weight)
    assert np.allclose(payload, expected, rtol=1e-12, atol=0)
    assert norm == pytest.approx(float(np.linalg.norm(updates.model_delta(local, global_))), rel=1e-12)


def test_clipped_payload_refuses_what_the_steps_refuse() -> None:
    good = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    with pytest.raises(updates.UpdateError, match="NaN or infinite"):
        updates.clipped_payload(ArrayRecord({"w": Array(np.array([0, np.nan, 0], np.float32))}), good, 1.0, 1.0)
    with pytest.raises(updates.UpdateError, match="names and shapes"):
        updates.clipped_payload(ArrayRecord({"v": Array(np.zeros(3, np.float32))}), good, 1.0, 1.0)
    with pytest.raises(updates.UpdateError, match="positive weight"):
        updates.clipped_payload(good, good, 1.0, 0.0)


@SETTINGS
@given(st.lists(st.floats(-1000, 1000, allow_nan=False), min_size=1, max_size=64), st.sampled_from([1.0, 2.0**10]))
def test_int32_quantization_equals_the_int64_one(values: list[float], scale: float) -> None:
    x = np.array(values)
    reference = np.rint(x * scale).astype(np.int64).astype(np.uint32)
    assert np.array_equal(quantize(x, scale, 1000.0), reference)
    consumed = x.copy()
    assert np.array_equal(quantize(consumed, scale, 1000.0, overwrite=True), reference)


def test_quantize_refuses_infinities_and_keeps_the_caller_buffer_unless_asked() -> None:
    with pytest.raises(SecAggConfigError, match="NaN or infinite"):
        quantize(np.array([1.0, -np.inf]), 2.0, 10.0)
    x = np.array([0.25, -0.5])
    quantize(x, 4.0, 1.0)
    assert np.array_equal(x, [0.25, -0.5])


def test_cached_expander_gives_the_fresh_expanders_masks() -> None:
    seed = os.urandom(32)
    first = MaskExpander.for_length(1000).expand(seed)
    MaskExpander.for_length(1000).expand(os.urandom(32))  # reuse overwrites the whole buffer
    assert np.array_equal(MaskExpander.for_length(1000).expand(seed), first)
    assert np.array_equal(MaskExpander(1000).expand(seed), first)
    assert MaskExpander.for_length(33).length == 33


def test_packed_header_round_trips_and_refuses_garbage() -> None:
    from privacy.secagg import SecAggConfig
    from privacy.secagg.errors import SecAggProtocolError
    from privacy.secagg.messages import Header

    config = SecAggConfig.recommended(20, clip_norm=1.0, max_weight=16)
    request = SetupRequest(Header("setup", os.urandom(16), 3, 2**64 - 1), (1, 2, 2**64 - 1), config)
    record = request.to_record()
    decoded = decode(record)
    assert isinstance(decoded, SetupRequest) and decoded.header == request.header == header_of(record)
    assert decoded.nodes == request.nodes and decoded.config.to_record_dict() == config.to_record_dict()
    for field, value in (("header", b"\x09" + bytes(41)), ("header", b"short"), ("config", "{not json")):
        tampered = dict(record)
        tampered[field] = value
        with pytest.raises(SecAggProtocolError):
            decode(tampered)


def test_parsed_parameters_are_reused_and_still_validated() -> None:
    import json

    from privacy.secagg import SecAggConfig
    from privacy.secagg.messages import config_from_json

    config = SecAggConfig.recommended(20, clip_norm=1.0, max_weight=16)
    text = json.dumps(config.to_record_dict(), sort_keys=True)
    assert config_from_json(text).to_record_dict() == config.to_record_dict()
    assert config_from_json(text) is config_from_json(text)
    broken = json.loads(text) | {"threshold": 2}  # t ≤ k/2: refused on every parse, never cached
    for _ in range(2):
        with pytest.raises(SecAggConfigError, match="threshold"):
            config_from_json(json.dumps(broken))


@SETTINGS
@given(st.lists(st.binary(max_size=300), max_size=12))
def test_packed_value_lists_round_trip(values: list[bytes]) -> None:
    from privacy.secagg.messages import pack_values, unpack_values

    assert unpack_values(pack_values(values)) == values


@pytest.mark.parametrize("data", [b"\x00\x00\x00", b"\x00\x00\x00\x05abc", ["list", "of", "str"]])
def test_malformed_packed_value_lists_are_refused(data: object) -> None:
    from privacy.secagg.errors import SecAggProtocolError
    from privacy.secagg.messages import unpack_values

    with pytest.raises(SecAggProtocolError, match="packed value list"):
        unpack_values(data)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("length", [1, 7, 8, 9, 12, 1000, 100_001])
def test_mask_is_the_zero_iv_aes256_ctr_keystream(length: int, split: bool) -> None:
    """Both paths (CTR alone; CTR then GCM) give plain AES-256-CTR (key = seed, IV = 0), short vectors included."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    seed = os.urandom(32)
    ctr = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update(bytes(4 * length))
    expander = MaskExpander(length)
    if 4 * length > 32:  # the GCM part starts at block 2
        expander._split = split
    assert expander.expand(seed).tobytes() == ctr


def test_short_masks_use_ctr_alone_and_long_ones_the_faster_path() -> None:
    from privacy.secagg import prg

    assert not MaskExpander(1000)._split  # 4 KB: one cipher object
    assert MaskExpander(1 << 20)._split == prg._gcm_is_faster()


def test_array_view_reads_a_version_2_header_and_parses_each_header_once() -> None:
    stream = io.BytesIO()
    np.lib.format.write_array(stream, np.arange(6.0).reshape(2, 3), version=(2, 0))
    wrapped = Array(dtype="float64", shape=(2, 3), stype="numpy.ndarray", data=stream.getvalue())
    assert np.array_equal(updates.array_view(wrapped), np.arange(6.0).reshape(2, 3))
    before = updates._npy_header.cache_info()
    for _ in range(3):
        updates.array_view(Array(np.full((4, 5), 2.0, np.float32)))
    after = updates._npy_header.cache_info()
    assert after.hits - before.hits >= 2 and after.misses - before.misses <= 1


@pytest.mark.parametrize("value", [
    np.zeros((3, 4), np.float32), np.arange(5), np.array(3.5), np.zeros(0, np.int8), np.ones((2, 3, 4), bool),
    np.arange(6, dtype=">i4").reshape(2, 3), np.zeros((2, 3)).T, np.zeros(10, np.complex64),
    np.arange(12.0)[::2], np.array(["ab", "c"]), np.zeros(3, dtype=[("a", "<f4"), ("b", "<i8")]),
], ids=lambda v: f"{v.dtype}{v.shape}")
def test_array_of_writes_flowers_bytes(value: np.ndarray) -> None:
    """Header and data byte for byte as Flower's np.save path, twice (the second from the header cache)."""
    for _ in range(2):
        ours, flowers = updates.array_of(value), Array.from_numpy_ndarray(value)
        assert (ours.dtype, ours.shape, ours.stype, ours.data) == (flowers.dtype, flowers.shape, flowers.stype,
                                                                   flowers.data)
        assert np.array_equal(ours.numpy(), value)


def test_array_record_of_equals_flowers() -> None:
    state = {"w": torch.randn(4, 3), "b": torch.randn(4), "t": torch.randn(3, 5).t(), "i": torch.arange(3)}
    ours, flowers = updates.array_record_of(state), ArrayRecord(state)
    assert list(ours.keys()) == list(flowers.keys())
    assert all(ours[k].data == flowers[k].data and ours[k].shape == flowers[k].shape for k in state)


def test_state_dict_of_equals_flowers_and_the_weights_are_the_models_own() -> None:
    tensors = {"w": torch.randn(4, 3), "b": torch.randn(4), "t": torch.randn(3, 5).t(), "i": torch.arange(3)}
    record = ArrayRecord(tensors)
    ours, flowers = updates.state_dict_of(record), record.to_torch_state_dict()
    assert list(ours) == list(flowers)
    for key, tensor in ours.items():
        assert tensor.dtype == flowers[key].dtype and torch.equal(tensor, flowers[key])
        tensor.add_(1)  # writable, and not the message's bytes
    assert torch.equal(updates.state_dict_of(record)["w"], tensors["w"])
