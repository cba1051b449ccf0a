"""Sign → tamper → verify raises, for every file of an artifact."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from lifecycle.artifacts import CARD_NAME, ONNX_NAME, WEIGHTS_NAME
from lifecycle.bom import BOM_NAME
from lifecycle.errors import SignatureError, StateError
from lifecycle.registry import Registry, VersionRecord
from lifecycle.signing import SIGNING_HASH, differing_files, ensure_signing_key, sign_model, verify_model


def _copy(version: VersionRecord, tmp_path: Path) -> tuple[Path, Path]:
    model_dir = tmp_path / "copy" / "model"
    shutil.copytree(version.artifact.model_dir, model_dir)
    sig = tmp_path / "copy" / "model.sig"
    shutil.copy(version.artifact.signature_path, sig)
    return model_dir, sig


def test_fresh_artifact_verifies(published: VersionRecord, registry: Registry) -> None:
    verify_model(published.artifact.model_dir, published.artifact.signature_path, registry.public_key_path())


@pytest.mark.parametrize("name", [WEIGHTS_NAME, ONNX_NAME, BOM_NAME, CARD_NAME])
def test_one_flipped_byte_is_named(name: str, published: VersionRecord, registry: Registry, tmp_path: Path) -> None:
    model_dir, sig = _copy(published, tmp_path)
    target = model_dir / name
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(SignatureError, match=name.replace(".", r"\.")):
        verify_model(model_dir, sig, registry.public_key_path())


def test_added_and_removed_files_are_named(published: VersionRecord, registry: Registry, tmp_path: Path) -> None:
    model_dir, sig = _copy(published, tmp_path)
    (model_dir / "backdoor.py").write_text("print('hi')")
    with pytest.raises(SignatureError, match="backdoor.py"):
        verify_model(model_dir, sig, registry.public_key_path())
    (model_dir / "backdoor.py").unlink()
    (model_dir / CARD_NAME).unlink()
    with pytest.raises(SignatureError, match=CARD_NAME):
        verify_model(model_dir, sig, registry.public_key_path())


def test_tampered_signature_file_raises(published: VersionRecord, registry: Registry, tmp_path: Path) -> None:
    model_dir, sig = _copy(published, tmp_path)
    data = bytearray(sig.read_bytes())
    data[len(data) // 2] ^= 0x01
    sig.write_bytes(bytes(data))
    with pytest.raises(SignatureError):
        verify_model(model_dir, sig, registry.public_key_path())


def test_other_key_is_refused(published: VersionRecord, tmp_path: Path) -> None:
    other = ensure_signing_key(tmp_path / "other-keys")
    with pytest.raises(SignatureError):
        verify_model(published.artifact.model_dir, published.artifact.signature_path, other.public_key)


def test_unsigned_and_missing_key(published: VersionRecord, registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(SignatureError, match="unsigned"):
        verify_model(published.artifact.model_dir, tmp_path / "nothing.sig", registry.public_key_path())
    with pytest.raises(StateError, match="missing"):
        verify_model(published.artifact.model_dir, published.artifact.signature_path, tmp_path / "no.pem")


def test_upstream_cli_accepts_the_signature(published: VersionRecord, registry: Registry) -> None:
    """Interoperability: the upstream `model_signing verify key` accepts fedguard's signature."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "model_signing", "verify", "key", str(published.artifact.model_dir),
         "--signature", str(published.artifact.signature_path), "--public_key", str(registry.public_key_path())],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded" in (result.stdout + result.stderr).lower()


def test_private_key_is_owner_only(published: VersionRecord, registry: Registry) -> None:
    key = registry.home.keys / "signing-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("detail", "files"),
    [
        # model_signing's text is a repr()'d list: its quoting depends on the digest bytes.
        ("Signature mismatch: ['Hash mismatch for \\'weights.safetensors\\': Expected \\'Digest(...)\\'']",
         ["weights.safetensors"]),
        ("Signature mismatch: [\"Hash mismatch for 'bom.json': Expected 'Digest(...)'\"]", ["bom.json"]),
        ("Signature mismatch: [\"Extra files found in model 'model': extra.bin\", "
         "\"Missing files in model 'model': MODEL_CARD.md\"]", ["MODEL_CARD.md", "extra.bin"]),
        ("some other failure", []),
    ],
    ids=["escaped-quotes", "double-quotes", "missing-and-extra", "none"],
)
def test_differing_files_reads_every_quoting(detail: str, files: list[str]) -> None:
    assert differing_files(detail) == files


def _signed_digests(signature: Path) -> dict[str, str]:
    """File name → digest algorithm, as the signed in-toto statement lists them."""
    import base64
    import json

    bundle = json.loads(signature.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    return {r["name"]: r["algorithm"] for r in statement["predicate"]["resources"]}


def test_every_file_is_signed_with_sha256(published: VersionRecord) -> None:
    """One SHA-256 per file: what the upstream `model_signing verify key` recomputes."""
    names = {p.name for p in published.artifact.model_dir.iterdir()}
    assert SIGNING_HASH == "sha256"
    assert _signed_digests(published.artifact.signature_path) == dict.fromkeys(names, "sha256")


@pytest.mark.parametrize("name", [".gitattributes", ".gitignore", ".github", ".git"])
def test_added_git_files_are_refused(name: str, published: VersionRecord, registry: Registry,
                                     tmp_path: Path) -> None:
    """model_signing's verifier ignores .git* paths; fedguard, which never writes them, refuses them."""
    model_dir, sig = _copy(published, tmp_path)
    if name in (".github", ".git"):
        (model_dir / name).mkdir()
        (model_dir / name / "hook.py").write_text("print('hi')")
    else:
        (model_dir / name).write_text("* filter=lfs")
    with pytest.raises(SignatureError, match=re.escape(name)) as raised:
        verify_model(model_dir, sig, registry.public_key_path())
    assert raised.value.files == [name]
    with pytest.raises(StateError, match=re.escape(name)):
        sign_model(model_dir, tmp_path / "again.sig", ensure_signing_key(tmp_path / "keys"))
