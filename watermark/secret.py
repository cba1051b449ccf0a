"""Watermark secrets on disk, and the commitment that binds a model to its secret.

A secret is one safetensors file (tensors ``inputs`` and ``labels``; the scheme
name, its params as JSON and the commitment in the safetensors metadata),
written owner-only (0600) under the keys directory::

    FEDGUARD_HOME/keys/watermarks/<commitment>.safetensors

The **commitment** (:func:`commitment`) is what goes in the model's ML-BOM
(``watermark.commitment``): it publishes *that* a watermark exists and pins
the exact secret, without revealing the triggers. Whoever later claims
ownership shows the secret; anyone recomputes its commitment, compares it with
the signed ML-BOM, and runs the verification. :func:`load_secret` refuses a
file whose content does not match its own or the expected commitment.

Notes
-----
A commitment here is a plain SHA-256 hash: binding (a different secret cannot
match without a SHA-256 collision) and, because the triggers are high-entropy
random draws, hiding in practice. It follows the trigger-set registration
argument of Adi et al. (2018, Sec. 3: commit to the marking key before release).
"""

from __future__ import annotations

import hmac
import json
import re
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from lifecycle.errors import ConfigurationError, NotFoundError, StateError, WatermarkError
from lifecycle.home import write_private
from watermark.base import WatermarkSecret
from watermark.evidence import FORMAT as FORMAT  # re-exported: the format tag of a secret file
from watermark.evidence import commitment_of, safetensors_metadata

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def commitment(secret: WatermarkSecret) -> str:
    """SHA-256 (hex) over a canonical encoding of ``secret``; goes in the ML-BOM.

    The encoding is, each part prefixed with its length as 8 big-endian bytes:
    the format tag ``fedguard-watermark-secret/1``, the scheme name (UTF-8),
    the params as JSON (sorted keys, no spaces), the inputs' shape as JSON and
    their float32 little-endian bytes, the labels' shape as JSON and their
    int64 little-endian bytes.
    """
    return commitment_of(secret.scheme, secret.params, secret.inputs.numpy(), secret.labels.numpy())


def secret_path(keys_dir: Path, digest: str) -> Path:
    """Where the secret with commitment ``digest`` lives: ``keys_dir/watermarks/<digest>.safetensors``.

    Raises
    ------
    ConfigurationError
        If ``digest`` is not a lowercase hex SHA-256 (it becomes a file name).
    """
    if not _HEX_DIGEST.fullmatch(digest):
        raise ConfigurationError(f"'{digest}' is not a watermark commitment (64 lowercase hex digits)")
    return keys_dir / "watermarks" / f"{digest}.safetensors"


def save_secret(secret: WatermarkSecret, path: Path) -> str:
    """Write ``secret`` to ``path`` (0600, atomically; parent created 0700); return its commitment."""
    digest = commitment(secret)
    metadata = {"format": FORMAT, "scheme": secret.scheme, "commitment": digest,
                "params": json.dumps(dict(secret.params), sort_keys=True)}
    data = save_tensors({"inputs": secret.inputs, "labels": secret.labels}, metadata=metadata)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, data)
    except OSError as exc:
        raise StateError(f"cannot write watermark secret '{path}' ({exc}); check the keys directory") from exc
    return digest


def load_secret(path: Path, *, expected: str | None = None) -> WatermarkSecret:
    """Read a secret written by :func:`save_secret` and check its commitment.

    Parameters
    ----------
    path : Path
        The secret file.
    expected : str, optional
        The commitment it must have (from the ML-BOM). Without it, the file is
        only checked against the commitment stored in itself, which someone
        able to edit the file can also rewrite.

    Raises
    ------
    NotFoundError
        If ``path`` does not exist.
    WatermarkError
        If the file is corrupt or its content does not match its stored or the
        expected commitment.
    ConfigurationError
        If ``expected`` is not a commitment (64 lowercase hex digits).
    """
    if expected is not None and not _HEX_DIGEST.fullmatch(expected):
        raise ConfigurationError(f"'{expected}' is not a watermark commitment (64 lowercase hex digits)")
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFoundError(f"watermark secret '{path}' does not exist; restore it from the keys backup") from exc
    except OSError as exc:
        raise StateError(f"cannot read watermark secret '{path}' ({exc})") from exc
    secret, stored = _decode(data, path)
    actual = commitment(secret)
    for claimed, source in ((stored, "the commitment stored in the file"), (expected, "the expected commitment")):
        if claimed is not None and not hmac.compare_digest(claimed, actual):
            raise WatermarkError(
                f"watermark secret '{path}' does not match {source} ({claimed}); it was altered or "
                "is not the secret of this model: restore it from the keys backup"
            )
    return secret


def _decode(data: bytes, path: Path) -> tuple[WatermarkSecret, str]:
    """Parse the file's tensors and metadata; return the secret and its stored commitment."""
    try:
        tensors = load_tensors(data)
        metadata = safetensors_metadata(data)
        secret = WatermarkSecret(
            scheme=metadata["scheme"], inputs=tensors["inputs"], labels=tensors["labels"],
            params=json.loads(metadata["params"]),
        )
        stored = metadata["commitment"]
    except (SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise WatermarkError(
            f"watermark secret '{path}' is corrupt or not a fedguard secret ({exc!r}); restore it from backup"
        ) from exc
    if metadata.get("format") != FORMAT or not isinstance(stored, str):
        raise WatermarkError(f"watermark secret '{path}' has an unknown format; expected {FORMAT}")
    return secret, stored
