"""Secret files: roundtrip, permissions, commitment, tamper tests."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_tensors

from lifecycle.errors import ConfigurationError, NotFoundError, WatermarkError
from watermark import WatermarkSecret, commitment, load_secret, save_secret, secret_path
from watermark.secret import FORMAT


def _flipped(secret: WatermarkSecret, index: int = 0) -> WatermarkSecret:
    labels = secret.labels.clone()
    labels[index] = 1 - labels[index]
    return WatermarkSecret(secret.scheme, secret.inputs, labels, dict(secret.params))


def _rewrite(path: Path, secret: WatermarkSecret, stored_commitment: str) -> None:
    """Overwrite the file with ``secret``'s tensors but a chosen stored commitment."""
    metadata = {"format": FORMAT, "scheme": secret.scheme, "commitment": stored_commitment,
                "params": json.dumps(dict(secret.params), sort_keys=True)}
    path.write_bytes(save_tensors({"inputs": secret.inputs, "labels": secret.labels}, metadata=metadata))


def test_roundtrip(tmp_path: Path, secret: WatermarkSecret) -> None:
    digest = commitment(secret)
    path = secret_path(tmp_path / "keys", digest)
    assert save_secret(secret, path) == digest
    loaded = load_secret(path, expected=digest)
    assert loaded.scheme == secret.scheme and dict(loaded.params) == dict(secret.params)
    assert torch.equal(loaded.inputs, secret.inputs) and torch.equal(loaded.labels, secret.labels)
    assert commitment(loaded) == digest


def test_file_is_private(tmp_path: Path, secret: WatermarkSecret) -> None:
    path = secret_path(tmp_path / "keys", commitment(secret))
    save_secret(secret, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_secret_path_layout(tmp_path: Path) -> None:
    digest = "ab" * 32
    assert secret_path(tmp_path, digest) == tmp_path / "watermarks" / f"{digest}.safetensors"
    with pytest.raises(ConfigurationError):
        secret_path(tmp_path, "../../etc/passwd")


def test_commitment_is_stable_and_canonical(secret: WatermarkSecret) -> None:
    digest = commitment(secret)
    assert len(digest) == 64 and digest == commitment(secret)
    reordered = WatermarkSecret(secret.scheme, secret.inputs, secret.labels,
                                dict(reversed(list(secret.params.items()))))
    assert commitment(reordered) == digest
    copied = WatermarkSecret(secret.scheme, secret.inputs.clone(), secret.labels.clone(), dict(secret.params))
    assert commitment(copied) == digest


def test_commitment_changes_when_one_label_flips(secret: WatermarkSecret) -> None:
    assert commitment(_flipped(secret, 17)) != commitment(secret)


def test_commitment_changes_with_inputs_params_and_scheme(secret: WatermarkSecret) -> None:
    inputs = secret.inputs.clone()
    inputs[3, 4] += 1e-3
    variants = [
        WatermarkSecret(secret.scheme, inputs, secret.labels, dict(secret.params)),
        WatermarkSecret(secret.scheme, secret.inputs, secret.labels, {**secret.params, "magnitude": 6.0}),
        WatermarkSecret("other", secret.inputs, secret.labels, dict(secret.params)),
    ]
    assert len({commitment(secret), *(commitment(v) for v in variants)}) == 4


def test_flipped_label_in_file_is_detected(tmp_path: Path, secret: WatermarkSecret) -> None:
    path = tmp_path / "secret.safetensors"
    digest = save_secret(secret, path)
    _rewrite(path, _flipped(secret), stored_commitment=digest)
    with pytest.raises(WatermarkError, match="altered"):
        load_secret(path, expected=digest)
    with pytest.raises(WatermarkError):
        load_secret(path)


def test_rewritten_commitment_is_caught_by_expected(tmp_path: Path, secret: WatermarkSecret) -> None:
    path = tmp_path / "secret.safetensors"
    digest = save_secret(secret, path)
    forged = _flipped(secret)
    _rewrite(path, forged, stored_commitment=commitment(forged))
    assert commitment(load_secret(path)) == commitment(forged)
    with pytest.raises(WatermarkError, match="expected commitment"):
        load_secret(path, expected=digest)


def test_missing_and_corrupt_files(tmp_path: Path, secret: WatermarkSecret) -> None:
    with pytest.raises(NotFoundError):
        load_secret(tmp_path / "absent.safetensors")
    path = tmp_path / "secret.safetensors"
    save_secret(secret, path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(WatermarkError, match="corrupt"):
        load_secret(path)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(WatermarkError):
        load_secret(path)


def test_malformed_expected_commitment_is_rejected(tmp_path: Path, secret: WatermarkSecret) -> None:
    path = tmp_path / "secret.safetensors"
    save_secret(secret, path)
    with pytest.raises(ConfigurationError):
        load_secret(path, expected="not-a-digest")
