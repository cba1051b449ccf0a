"""Watermark evidence without torch: the commitment, a secret file's contents, and the trigger-set decision.

The serving process runs models with ONNX Runtime and imports no torch
(issue 16), yet its admin verification route
(:mod:`serving.protocols.v1.watermark`) must recompute a secret's commitment
exactly as :func:`watermark.secret.commitment` does and decide as
:class:`watermark.schemes.trigger_set.TriggerSetScheme` does. Both live here,
on numpy arrays, and the torch side calls them: one definition, so the two
sides cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lifecycle.errors import WatermarkError

FORMAT = "fedguard-watermark-secret/1"


def commitment_of(scheme: str, params: Mapping[str, Any], inputs: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 (hex) over the canonical encoding documented at :func:`watermark.secret.commitment`."""
    encoded = json.dumps(dict(params), sort_keys=True, separators=(",", ":"), allow_nan=False)
    parts = [
        FORMAT.encode(), scheme.encode(), encoded.encode(),
        json.dumps(list(inputs.shape)).encode(), np.ascontiguousarray(inputs, dtype="<f4").tobytes(),
        json.dumps(list(labels.shape)).encode(), np.ascontiguousarray(labels, dtype="<i8").tobytes(),
    ]
    return hash_parts(parts)


def hash_parts(parts: Iterable[bytes]) -> str:
    """SHA-256 of length-prefixed parts (so no two part lists encode alike)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class SecretArrays:
    """A secret file's contents as numpy arrays, with the commitment recomputed from them."""

    scheme: str
    params: Mapping[str, Any]
    inputs: np.ndarray
    labels: np.ndarray
    stored_commitment: str

    @property
    def commitment(self) -> str:
        return commitment_of(self.scheme, self.params, self.inputs, self.labels)


def read_secret_bytes(data: bytes, source: str) -> SecretArrays:
    """Parse a secret file written by :func:`watermark.secret.save_secret` (``source`` names it in errors).

    Raises
    ------
    WatermarkError
        If the bytes are not a fedguard watermark secret.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load as load_arrays

    try:
        arrays = load_arrays(data)
        metadata = safetensors_metadata(data)
        secret = SecretArrays(metadata["scheme"], json.loads(metadata["params"]),
                              np.asarray(arrays["inputs"], dtype=np.float32),
                              np.asarray(arrays["labels"], dtype=np.int64), metadata["commitment"])
    except (SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise WatermarkError(f"{source} is corrupt or not a fedguard watermark secret ({exc!r})") from exc
    if metadata.get("format") != FORMAT or not isinstance(secret.params, dict):
        raise WatermarkError(f"{source} has an unknown format; expected {FORMAT}")
    if secret.inputs.ndim != 2 or secret.labels.ndim != 1 or secret.inputs.shape[0] != secret.labels.shape[0]:
        raise WatermarkError(f"{source} holds inputs {secret.inputs.shape} and labels {secret.labels.shape}; "
                             "expected (n, features) and (n,)")
    return secret


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` map of a safetensors byte string."""
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_length])
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    return {str(key): str(value) for key, value in metadata.items()}
