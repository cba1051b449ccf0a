"""Properties of the building blocks: headroom, quantization, Shamir, PRG, neighbour graph."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycle.errors import ConfigurationError
from privacy.secagg import SecAggConfig, SecAggConfigError, shamir
from privacy.secagg.config import MODULUS
from privacy.secagg.graph import neighbour_graph, neighbours_of
from privacy.secagg.prg import MaskExpander, expand, throughput
from privacy.secagg.quantization import dequantize, quantize

SETTINGS = settings(max_examples=30, deadline=None)


# ---------------------------------------------------------------------------- config and headroom
def test_overflowing_configuration_is_refused_with_the_numbers() -> None:
    config = SecAggConfig(num_sites=20, threshold=6, num_neighbours=10, clip_norm=1.0, max_weight=1000.0, scale=2.0**20)
    with pytest.raises(SecAggConfigError) as raised:
        config.validate()
    message = str(raised.value)
    assert "could overflow" in message and "20·(2·1000·1.04858e+06 + 1)" in message and "use scale ≤" in message
    assert isinstance(raised.value, ConfigurationError)


@pytest.mark.parametrize(("field", "value", "match"), [
    ("threshold", 2, "k/2 < t"), ("threshold", 11, "k/2 < t"), ("num_neighbours", 20, r"\[2, num_sites\)"),
    ("clip_norm", 0.0, "clip_norm"), ("max_weight", -1.0, "max_weight"), ("weighting", "median", "weighting"),
])
def test_invalid_parameters_are_refused(field: str, value: object, match: str) -> None:
    values = {"num_sites": 20, "threshold": 6, "num_neighbours": 10, "clip_norm": 1.0, "max_weight": 100.0}
    values[field] = value
    with pytest.raises(SecAggConfigError, match=match):
        SecAggConfig(**values).validate()  # type: ignore[arg-type]


def test_round_checks() -> None:
    config = SecAggConfig(num_sites=10, threshold=3, num_neighbours=5, clip_norm=1.0, max_weight=10.0).validate()
    with pytest.raises(SecAggConfigError, match="need more than num_neighbours"):
        config.check_round(5)
    with pytest.raises(SecAggConfigError, match="even number of sites"):
        config.check_round(7)
    with pytest.raises(SecAggConfigError, match="sized for num_sites=10"):
        config.check_round(11)
    config.check_round(8)


def test_recommended_config() -> None:
    config = SecAggConfig.recommended(20, clip_norm=1.0, max_weight=1000.0)
    assert (config.num_neighbours, config.threshold, config.dropout_tolerance) == (10, 6, 4)
    assert config.effective_scale >= 2**16


@SETTINGS
@given(st.integers(3, 200), st.sampled_from([0.01, 0.5, 1.0, 10.0]), st.sampled_from([1.0, 37.0, 1000.0, 1e5]))
def test_auto_scale_leaves_headroom_for_the_worst_case(n: int, clip: float, max_weight: float) -> None:
    """The extreme sums (every site at +B, every site at −B) decode without wrapping."""
    config = SecAggConfig(num_sites=n, threshold=2, num_neighbours=2, clip_norm=clip, max_weight=max_weight)
    try:
        config.validate()
    except SecAggConfigError as error:  # too coarse: refused, never wrapped
        assert "too coarse" in str(error)
        return
    scale, bound = config.effective_scale, config.bound
    assert n * (2 * bound * scale + 1) < MODULUS
    for sign in (1.0, -1.0):
        encoded = quantize(np.full(3, sign * bound), scale, bound)
        total = np.zeros(3, np.uint32)
        for _ in range(min(n, 5)):
            np.add(total, encoded, out=total)
        total = (total.astype(np.uint64) * (n // min(n, 5)) + encoded.astype(np.uint64) * (n % min(n, 5)))
        decoded = dequantize((total % MODULUS).astype(np.uint32), scale)
        assert np.allclose(decoded, sign * bound * n, rtol=0, atol=n / scale)


@SETTINGS
@given(st.lists(st.floats(-1000, 1000, allow_nan=False), min_size=1, max_size=50), st.sampled_from([2.0**8, 2.0**16]))
def test_quantization_round_trip(values: list[float], scale: float) -> None:
    x = np.array(values)
    assert np.max(np.abs(dequantize(quantize(x, scale, 1000.0), scale) - x)) <= 0.5 / scale + 1e-12


def test_quantize_refuses_values_beyond_the_bound() -> None:
    with pytest.raises(SecAggConfigError, match="exceeds the bound"):
        quantize(np.array([0.5, 2.0]), 2.0**10, 1.0)
    with pytest.raises(SecAggConfigError, match="NaN"):
        quantize(np.array([np.nan]), 2.0**10, 1.0)


# ---------------------------------------------------------------------------- Shamir
@SETTINGS
@given(st.data(), st.binary(min_size=32, max_size=32), st.integers(1, 10))
def test_any_t_shares_rebuild_the_secret(data: st.DataObject, secret: bytes, n: int) -> None:
    t = data.draw(st.integers(1, n))
    points = data.draw(st.lists(st.integers(1, 2**40), min_size=n, max_size=n, unique=True))
    shares = shamir.split(secret, points, t)
    subset = data.draw(st.permutations(shares))[:t]
    assert shamir.combine(subset, t) == secret
    assert shamir.combine([shamir.Share.from_bytes(s.to_bytes()) for s in subset], t) == secret


@SETTINGS
@given(st.data(), st.binary(min_size=32, max_size=32), st.integers(2, 10))
def test_fewer_than_t_shares_do_not_reveal_the_secret(data: st.DataObject, secret: bytes, n: int) -> None:
    t = data.draw(st.integers(2, n))
    shares = shamir.split(secret, list(range(1, n + 1)), t)
    subset = data.draw(st.permutations(shares))[: t - 1]
    with pytest.raises(Exception):  # noqa: B017 (fewer shares than t: refused)
        shamir.combine(subset, t)
    try:
        assert shamir.combine(subset, t - 1) != secret  # interpolating t−1 points gives some other value
    except shamir.SecAggAuthenticationError:
        pass  # ... usually not even a 32-byte value


def test_t_minus_one_shares_fit_every_secret() -> None:
    """Information-theoretic hiding: for any candidate secret, a polynomial passes through the t−1 shares."""
    shares = shamir.split(b"\x01" * 32, [1, 2, 3, 4, 5], 3)[:2]
    for candidate in (b"\x00" * 32, b"\x42" * 32, b"\xff" * 32):
        known = [(0, int.from_bytes(candidate, "big"))] + [(s.x, s.y) for s in shares]
        completion = shamir.Share(3, _interpolate(known, 3))
        assert shamir.combine(shares + [completion], 3) == candidate


def _interpolate(points: list[tuple[int, int]], x: int) -> int:
    p, total = shamir.PRIME, 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if j != i:
                num, den = num * (x - xj) % p, den * (xi - xj) % p
        total = (total + yi * num * pow(den, -1, p)) % p
    return total


# ---------------------------------------------------------------------------- PRG
def test_prg_is_deterministic_and_seed_dependent() -> None:
    a, b = expand(b"\x01" * 32, 1000), expand(b"\x02" * 32, 1000)
    assert a.dtype == np.uint32 and a.shape == (1000,)
    assert np.array_equal(a, expand(b"\x01" * 32, 1000)) and not np.array_equal(a, b)
    assert np.array_equal(expand(b"\x01" * 32, 10), a[:10])
    assert 0.45 < np.mean(a > 2**31) < 0.55


def test_prg_add_then_subtract_is_identity() -> None:
    expander = MaskExpander(257)
    x = np.arange(257, dtype=np.uint32)
    y = x.copy()
    expander.add(y, b"\x07" * 32)
    assert not np.array_equal(x, y)
    expander.subtract(y, b"\x07" * 32)
    assert np.array_equal(x, y)
    with pytest.raises(ValueError, match="32 bytes"):
        expander.add(y, b"short")


def test_prg_known_answer() -> None:
    """AES-256-CTR keystream (key = seed, IV = 0) = AES-256-ECB of the counter blocks."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    seed = bytes(range(32))
    ecb = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    blocks = ecb.update(b"".join(i.to_bytes(16, "big") for i in range(4)))
    assert expand(seed, 16).tobytes() == blocks


def test_throughput_is_measured() -> None:
    assert throughput(1 << 14, 4) > 0


# ---------------------------------------------------------------------------- graph
@SETTINGS
@given(st.integers(3, 40), st.data(), st.binary(min_size=16, max_size=16))
def test_neighbour_graph_is_k_regular_and_symmetric(n: int, data: st.DataObject, seed: bytes) -> None:
    k = data.draw(st.sampled_from([k for k in range(1, n) if k % 2 == 0 or n % 2 == 0]))
    nodes = data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n, unique=True))
    graph = neighbour_graph(nodes, k, seed)
    assert set(graph) == set(nodes)
    for node, neighbours in graph.items():
        assert len(set(neighbours)) == k and node not in neighbours
        assert all(node in graph[j] for j in neighbours)
    assert graph == neighbour_graph(list(reversed(nodes)), k, seed)


@SETTINGS
@given(st.integers(3, 30), st.data(), st.binary(min_size=16, max_size=16))
def test_a_sites_own_neighbours_are_its_row_of_the_graph(n: int, data: st.DataObject, seed: bytes) -> None:
    k = data.draw(st.sampled_from([k for k in range(1, n) if k % 2 == 0 or n % 2 == 0]))
    nodes = data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n, unique=True))
    graph = neighbour_graph(nodes, k, seed)
    assert all(neighbours_of(nodes, k, seed, node) == graph[node] for node in nodes)


def test_neighbour_graph_depends_on_the_round_seed() -> None:
    nodes = list(range(100, 140))
    assert neighbour_graph(nodes, 6, b"a" * 16) != neighbour_graph(nodes, 6, b"b" * 16)
    with pytest.raises(SecAggConfigError, match="even number"):
        neighbour_graph(list(range(7)), 3, b"a" * 16)
