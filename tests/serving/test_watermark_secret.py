"""A damaged watermark secret fails ``models verify`` and leaves serving alone: the decision of docs/serving.md §2.

The secret is the owner's evidence of ownership, kept beside the signing key
and pinned by the commitment in the signed ML-BOM; it is not part of the
served artifact. Serving checks what it serves, the signature (DESIGN §5), and
never reads the secret; ``fedguard models verify`` checks the signature and
then the ownership evidence, so a flipped byte in the secret fails it (exit 5,
naming the file) while the model itself still verifies and serves.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from fedguard.verify import verify_version
from lifecycle.errors import WatermarkError
from lifecycle.packaging import publish_model
from lifecycle.registry import Registry, VersionRecord
from lifecycle.signing import verify_model
from serving.app import create_app
from serving.guards.keys import create_key
from serving.settings import ServingSettings
from tests.conftest import make_publication
from tests.serving.conftest import bearer
from watermark import commitment, create_scheme, save_secret, secret_path

FEATURES = 8  # 2^8 sign patterns: room for the scheme's 64 triggers


@pytest.fixture
def watermarked(registry: Registry) -> tuple[VersionRecord, Path]:
    """A published model carrying a trigger-set watermark, and its secret's file."""
    publication = make_publication(features=FEATURES)
    scheme = create_scheme("trigger-set", size=24, anchor_batch=64)  # p = 2⁻²⁴ < 1e-6 when all fit; ~0.1 s
    secret = scheme.generate(publication.model, publication.spec, generator=torch.Generator().manual_seed(0))
    report = scheme.embed(publication.model, secret, generator=torch.Generator().manual_seed(0))
    digest = save_secret(secret, secret_path(registry.home.keys, commitment(secret)))
    mark = {"scheme": scheme.name, "commitment": digest, **scheme.measure(report.model, secret).to_dict()}
    record = publish_model(registry, dataclasses.replace(publication, model=report.model, watermark=mark))
    return record, secret_path(registry.home.keys, digest)


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_damaged_secret_fails_verify_but_not_serve(registry: Registry,
                                                     watermarked: tuple[VersionRecord, Path]) -> None:
    record, secret_file = watermarked
    assert verify_version(registry, record.ref)["watermark"]["verified"] is True  # intact: both pass

    flip_last_byte(secret_file)
    with pytest.raises(WatermarkError, match="does not match") as caught:
        verify_version(registry, record.ref)
    assert str(secret_file) in str(caught.value) and caught.value.exit_code == 5
    verify_model(record.artifact.model_dir, record.artifact.signature_path, registry.public_key_path())  # intact

    app = create_app(registry, ServingSettings())  # what 'fedguard serve' builds: it starts
    key = create_key(registry, "predict", "tests", actor="test")
    with TestClient(app) as client:
        response = client.post(f"/v1/models/{record.name}/predict", json={"instances": [[0.0] * FEATURES]},
                               headers=bearer(key))
    assert response.status_code == 200 and response.json()["version"] == record.version
