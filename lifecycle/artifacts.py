"""The content-addressed artifact store under ``FEDGUARD_HOME/artifacts``.

An artifact is a model directory (``weights.safetensors``, ``model.onnx``,
``bom.json``, ``MODEL_CARD.md``) plus its signature beside it::

    artifacts/<sha256>/model/...      the signed directory
    artifacts/<sha256>/model.sig      OpenSSF Model Signing bundle

The address is the SHA-256 over the sorted (path, file SHA-256) list of the
model directory, so identical models share one entry and an address can be
re-derived from the files. A model is staged in ``artifacts/.staging`` and
moved into place with one ``rename``: a crash leaves no half artifact.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lifecycle.errors import NotFoundError

if TYPE_CHECKING:
    from torch import nn

WEIGHTS_NAME = "weights.safetensors"
ONNX_NAME = "model.onnx"
"""The model exported to ONNX (:mod:`lifecycle.export`): what serving runs."""
CARD_NAME = "MODEL_CARD.md"
SIGNATURE_NAME = "model.sig"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks so large artifacts never sit whole in memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def directory_digest(model_dir: Path) -> str:
    """SHA-256 over the sorted (relative path, file SHA-256) pairs of a directory."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(model_dir).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class StoredArtifact:
    """Where one stored artifact lives."""

    digest: str
    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def signature_path(self) -> Path:
        return self.root / SIGNATURE_NAME


class ArtifactStore:
    """Content-addressed store of signed model directories."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def stage(self) -> Path:
        """A fresh staging folder; put the model in ``<stage>/model``."""
        staging = self.root / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=staging))
        (stage / "model").mkdir()
        return stage

    def commit(self, stage: Path) -> StoredArtifact:
        """Move a staged (and signed) model into its content address, atomically."""
        digest = directory_digest(stage / "model")
        target = self.root / digest
        if target.exists():
            shutil.rmtree(stage)
        else:
            os.rename(stage, target)
        return StoredArtifact(digest, target)

    def get(self, digest: str) -> StoredArtifact:
        artifact = StoredArtifact(digest, self.root / digest)
        if not artifact.model_dir.is_dir():
            raise NotFoundError(
                f"artifact {digest[:12]} is missing from '{self.root}'; restore FEDGUARD_HOME/artifacts from a backup"
            )
        return artifact


def load_model(model_dir: Path) -> tuple[nn.Module, dict[str, object]]:
    """Rebuild a model from its BOM and safetensors weights (no pickle), in eval mode."""
    from lifecycle.architecture import build_model  # torch is imported only when a model is loaded
    from lifecycle.bom import bom_spec, read_bom
    from lifecycle.weights import load_weights

    bom = read_bom(model_dir)
    model = build_model(bom_spec(bom))
    load_weights(model, model_dir / WEIGHTS_NAME)
    model.eval()
    return model, bom
