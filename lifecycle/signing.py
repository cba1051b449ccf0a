"""Model signatures in the OpenSSF Model Signing format, with a local key.

fedguard signs a model *directory* with ``model-signing`` (key-based, offline),
so anyone can check a fedguard model with the upstream tool::

    model_signing verify key MODEL_DIR --signature model.sig --public_key signing-key.pub.pem

The private key is an ECDSA P-256 key generated on first use under
``FEDGUARD_HOME/keys/`` (0600). Verification raises, never returns ``False``,
and names the file that differs.

Notes
-----
The signature is a Sigstore bundle over an in-toto statement listing the
SHA-256 of every file (OpenSSF Model Signing v1.0 specification, file
serialization: every file of the directory is an entry, so a changed, added or
removed file fails verification). Signing and verifying each cost one SHA-256
pass over the model's CPU time, the floor for this format; in wall time each
takes about half a single-threaded pass on two cores, because a published
model holds two large files of equal size (``weights.safetensors`` and the
ONNX export, which carries the same parameters) and model_signing hashes files
on a thread pool: sign + verify 1.12× one pass (``benchmarks/signing.py``,
RESULTS.md). The largest file's digest cannot be split across threads. Two faster
configurations of ``model-signing`` were measured and rejected: BLAKE3 digests
(sign + verify 0.8× one SHA-256 pass) cannot be checked by the upstream
``model_signing verify key``, which hashes with SHA-256 whatever the signature
says; shard serialization cannot be verified at all by model-signing 1.1.1
(the shard size comes back from the signature as a float).

The first call in a process imports ``model_signing``: 0.3–0.5 s here, 5× the
hashing of a 100 MB model, because its package imports the keyless Sigstore
client (``sigstore``, TUF, ``requests``, pydantic models) that key-based
signing never uses; the key path's own dependencies alone take 0.15–0.2 s.
The import stays in the first call so that commands that never sign or verify
do not pay it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lifecycle import logger
from lifecycle.errors import SignatureError, StateError
from lifecycle.home import write_private

if TYPE_CHECKING:
    from model_signing import hashing

PRIVATE_KEY_NAME = "signing-key.pem"
PUBLIC_KEY_NAME = "signing-key.pub.pem"
# model_signing reports mismatches as the repr() of a list, so quoting varies with the bytes.
_HASH_MISMATCH = re.compile(r"Hash mismatch for \\*'(.+?)\\*': Expected")
_SET_MISMATCH = re.compile(r"(?:Missing files in|Extra files found in) model \\*'[^']*\\*': ([^\"'\]]+)")

SIGNING_HASH: Final = "sha256"
"""The per-file digest: the one the upstream ``model_signing verify key`` checks (see the module's Notes)."""
# model_signing leaves these out of the manifest whatever it is told at verification (its default
# configuration ignores them), so fedguard, which never writes them, refuses any of them outright.
_UNSIGNED_NAMES: Final = (".git", ".gitattributes", ".github", ".gitignore")


@dataclass(frozen=True)
class SigningKey:
    """Paths of a signing key pair."""

    private_key: Path
    public_key: Path

    @property
    def fingerprint(self) -> str:
        return public_key_fingerprint(self.public_key)


def differing_files(detail: str) -> list[str]:
    """The file names a model_signing error reports as changed, missing or extra."""
    names = _HASH_MISMATCH.findall(detail)
    for group in _SET_MISMATCH.findall(detail):
        names.extend(name.strip() for name in group.split(","))
    return sorted({name for name in names if name})


def ensure_signing_key(keys_dir: Path) -> SigningKey:
    """Return the signing key in ``keys_dir``, generating it on first use.

    A lost private key beside a surviving public key is an error, not a cue to
    make a new pair: replacing the public key would make every model signed
    so far unverifiable.
    """
    key = SigningKey(keys_dir / PRIVATE_KEY_NAME, keys_dir / PUBLIC_KEY_NAME)
    if key.private_key.exists():
        if not key.public_key.exists():
            private = serialization.load_pem_private_key(key.private_key.read_bytes(), password=None)
            _write_public(private.public_key(), key.public_key)
        return key
    if key.public_key.exists():
        raise StateError(
            f"signing key '{key.private_key}' is missing but its public key is still there; restore the "
            "private key from your backup, or move the public key aside to start a new signer (models "
            "signed before then will need the old public key to verify)"
        )
    private_key = ec.generate_private_key(ec.SECP256R1())
    write_private(
        key.private_key,
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_public(private_key.public_key(), key.public_key)
    logger.info("generated model signing key %s", key.private_key)
    return key


def _write_public(public_key: object, path: Path) -> None:
    pem = public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.write_bytes(pem)


def public_key_fingerprint(public_key: Path) -> str:
    """SHA-256 of the DER public key: a short, stable signer identity."""
    try:
        key = serialization.load_pem_public_key(public_key.read_bytes())
    except FileNotFoundError as exc:
        raise StateError(
            f"public key '{public_key}' is missing; restore it from your backup or "
            "pass the signer's public key explicitly"
        ) from exc
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _unsigned_files(model_dir: Path) -> list[str]:
    """Entries of ``model_dir`` that model_signing would leave out of the manifest."""
    return sorted(name for name in _UNSIGNED_NAMES if (model_dir / name).exists() or (model_dir / name).is_symlink())


def _hashing_config() -> hashing.Config:
    """One SHA-256 per file, files hashed on a thread pool in 1 MiB reads (model_signing's file serialization)."""
    from model_signing import hashing

    return hashing.Config().use_file_serialization(  # type: ignore[no-untyped-call]
        hashing_algorithm=SIGNING_HASH
    )


def sign_model(model_dir: Path, signature_path: Path, key: SigningKey) -> None:
    """Sign every file of ``model_dir``; write the bundle to ``signature_path``.

    Refuses a directory holding a path that model_signing would leave out of
    the signature (``.git``, ``.gitattributes``, ``.github``, ``.gitignore``).
    """
    from model_signing import signing

    if not key.private_key.exists():
        raise StateError(f"signing key '{key.private_key}' is missing; restore it from your backup")
    unsigned = _unsigned_files(model_dir)
    if unsigned:
        raise StateError(
            f"'{model_dir}' holds {', '.join(unsigned)}, which model_signing leaves out of every signature; "
            "remove them before signing"
        )
    signing.Config().use_elliptic_key_signer(  # type: ignore[no-untyped-call]
        private_key=key.private_key
    ).set_hashing_config(_hashing_config()).sign(model_dir, signature_path)


def verify_model(model_dir: Path, signature_path: Path, public_key: Path) -> None:
    """Verify ``model_dir`` against its signature.

    Raises
    ------
    SignatureError
        The signature is missing, malformed, from another key, or a file
        differs, is missing or was added (the message names it).
    StateError
        The public key is missing.
    """
    from model_signing import verifying

    if not public_key.exists():
        raise StateError(
            f"public key '{public_key}' is missing; restore it from your backup or "
            "pass the signer's public key explicitly"
        )
    if not signature_path.exists():
        raise SignatureError(f"model '{model_dir}' has no signature at '{signature_path}'; it is unsigned and refused")
    unsigned = _unsigned_files(model_dir)
    if unsigned:  # the verifier would ignore them: an addition no signature covers
        raise SignatureError(
            f"signature does not verify: {', '.join(unsigned)} in '{model_dir}' differ(s) from what was "
            "signed (added: no signature covers it); do not use this model",
            files=unsigned,
        )
    try:
        verifying.Config().use_elliptic_key_verifier(  # type: ignore[no-untyped-call]
            public_key=public_key
        ).verify(model_dir, signature_path)
    except Exception as exc:  # model_signing raises ValueError and others
        detail = str(exc)
        files = differing_files(detail)
        if files:
            raise SignatureError(
                f"signature does not verify: {', '.join(files)} in '{model_dir}' differ(s) from what was "
                "signed (changed, added or removed); do not use this model",
                files=files,
            ) from exc
        raise SignatureError(
            f"signature '{signature_path}' does not verify for '{model_dir}' "
            f"({type(exc).__name__}: {detail[:200]}); the signature file or key is wrong or was altered"
        ) from exc
