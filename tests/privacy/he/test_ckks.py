"""The CKKS backend: round trips, the error budget on sums, and who can decrypt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifecycle.errors import ConfigurationError
from privacy.he import HEKeyError, HEPayloadError, create_backend, create_federation_keys
from privacy.he.backend import HEBackend
from privacy.he.keys import DEFAULT_PARAMETERS


@pytest.fixture(scope="module")
def site(federation_keys: tuple[Path, Path]) -> HEBackend:
    return create_backend("ckks", federation_keys[0], role="site")


@pytest.fixture(scope="module")
def coordinator(federation_keys: tuple[Path, Path]) -> HEBackend:
    return create_backend("ckks", federation_keys[1], role="coordinator")


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("length", [1, 4095, 4096, 4097, 9000])
def test_round_trip_across_chunk_boundaries(site: HEBackend, coordinator: HEBackend, length: int) -> None:
    vector = np.random.default_rng(length).normal(size=length)
    ciphertext = site.encrypt(vector)
    assert len(ciphertext.chunks) == -(-length // DEFAULT_PARAMETERS.slots)
    moved = coordinator.deserialize(site.serialize(ciphertext), length)
    back = site.deserialize(coordinator.serialize(moved), length)
    assert np.max(np.abs(site.decrypt(back) - vector)) < 1e-9


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sites=st.integers(1, 100), length=st.integers(1, 5000), magnitude=st.sampled_from([1e-6, 1e-2, 1.0, 1e3]),
       seed=st.integers(0, 2**16))
def test_sum_error_below_one_in_a_million(site: HEBackend, coordinator: HEBackend, sites: int, length: int,
                                          magnitude: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    payloads = [magnitude * rng.normal(size=length) for _ in range(sites)]
    ciphertexts = [coordinator.deserialize(site.serialize(site.encrypt(p)), length) for p in payloads]
    total = site.decrypt(site.deserialize(coordinator.serialize(coordinator.add(ciphertexts)), length))
    assert relative_error(total, np.sum(payloads, axis=0)) < 1e-6


def test_coordinator_cannot_decrypt(site: HEBackend, coordinator: HEBackend) -> None:
    assert not coordinator.can_decrypt and site.can_decrypt
    ciphertext = coordinator.encrypt(np.ones(10))
    with pytest.raises(HEKeyError, match="no secret key"):
        coordinator.decrypt(ciphertext)


def test_a_foreign_key_is_refused(site: HEBackend, tmp_path: Path) -> None:
    other_secret, _ = create_federation_keys(tmp_path / "s", tmp_path / "c")
    other = create_backend("ckks", other_secret, role="site")
    assert other.key_id != site.key_id
    with pytest.raises(HEPayloadError, match="federation key"):
        site.decrypt(other.encrypt(np.ones(3)))
    with pytest.raises(HEPayloadError, match="federation key"):
        site.add([site.encrypt(np.ones(3)), other.encrypt(np.ones(3))])


def test_garbage_and_wrong_lengths_are_refused(coordinator: HEBackend) -> None:
    with pytest.raises(HEPayloadError, match="does not parse"):
        coordinator.deserialize([b"not a ciphertext"], 5)
    blobs = coordinator.serialize(coordinator.encrypt(np.ones(5)))
    with pytest.raises(HEPayloadError, match="expected 6"):
        coordinator.deserialize(blobs, 6)
    with pytest.raises(HEPayloadError, match="chunks"):
        coordinator.deserialize(blobs, 5000)


def test_values_beyond_the_headroom_and_non_finite_are_refused(site: HEBackend) -> None:
    with pytest.raises(HEPayloadError, match="headroom"):
        site.encrypt(np.array([site.max_abs]))
    with pytest.raises(HEPayloadError, match="NaN"):
        site.encrypt(np.array([np.nan]))


def test_unknown_backend_is_a_configuration_error(federation_keys: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigurationError, match="unknown homomorphic backend"):
        create_backend("paillier", federation_keys[1], role="coordinator")


def test_error_budget_at_100k_parameters(site: HEBackend, coordinator: HEBackend) -> None:
    """The documented budget: 10 clipped, example-weighted payloads of 100k values; tiny updates included."""
    rng = np.random.default_rng(7)
    payloads = []
    for _ in range(10):
        delta = rng.normal(size=100_000)
        delta *= rng.uniform(1e-4, 1.0) / np.linalg.norm(delta)  # ‖Δ‖ ≤ C = 1, some far below it
        weight = float(rng.integers(1, 10_000))
        payloads.append(np.concatenate([weight * delta, [weight, 1.0]]))
    ciphertexts = [coordinator.deserialize(site.serialize(site.encrypt(p)), p.size) for p in payloads]
    total = site.decrypt(site.deserialize(coordinator.serialize(coordinator.add(ciphertexts)), payloads[0].size))
    want = np.sum(payloads, axis=0)
    assert relative_error(total, want) < 1e-6
    assert np.max(np.abs(total - want)) / np.max(np.abs(want[:-2])) < 1e-6
    assert total[-1] == pytest.approx(10, abs=1e-6)
