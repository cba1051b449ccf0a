"""A site's enrolment bundle: one file, owner-only, holding everything a site agent needs.

The coordinator writes it (``fedguard site enroll``); the site agent reads it
(``fedguard client start --bundle``). It lives in ``lifecycle`` because both
sides use it and the site may not import ``coordinator``.

Format: UTF-8 JSON, one object, ``"format": "fedguard-site-bundle/1"``::

    federation, site, endpoint ("host:port" of the coordinator's TLS gateway),
    ca_cert (PEM), site_cert (PEM), site_key (PEM PKCS#8),
    node_key (OpenSSH EC private key for Flower SuperNode authentication),
    node_public_key (PEM), issued_at (ISO 8601)
    contract (optional: the federation's data contract, canonical JSON, from
    ``fedguard coordinator data``; a bundle issued before it has none)

and optionally

    he_secret_context (base64 of the federation's CKKS secret context, from
    ``fedguard site enroll --he-secret-context``; docs/homomorphic.md)

It holds two private keys (three with the CKKS secret context), so it is written 0600 and the reader refuses a
file that group or others may read (as OpenSSH refuses such a private key):
a bundle copied with lax permissions must be considered leaked and the site
rotated.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from lifecycle.errors import ConfigurationError, StateError
from lifecycle.home import write_private

FORMAT = "fedguard-site-bundle/1"


class BundlePermissionError(StateError):
    """The bundle file may be read by someone other than its owner."""


class BundleFormatError(ConfigurationError):
    """The file is not a fedguard site bundle (or a damaged one)."""


@dataclass(frozen=True)
class SiteBundle:
    """The contents of one site bundle; the private keys are hidden from ``repr``."""

    federation: str
    site: str
    endpoint: str
    ca_cert: str
    site_cert: str
    node_public_key: str
    issued_at: str
    site_key: str = field(repr=False)
    node_key: str = field(repr=False)
    contract: str = field(default="", repr=False)
    """The federation's data contract as canonical JSON (``federation.contract``); empty when none was declared."""
    he_secret_context: str = field(default="", repr=False)
    """Base64 of the federation's CKKS secret context; empty when the federation does not use CKKS."""

    def he_secret_bytes(self) -> bytes | None:
        """The CKKS secret context's bytes, or ``None`` if this bundle carries none."""
        return base64.b64decode(self.he_secret_context) if self.he_secret_context else None

    @property
    def host(self) -> str:
        return self.endpoint.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.endpoint.rpartition(":")[2])


def write_bundle(path: Path, bundle: SiteBundle) -> Path:
    """Write ``bundle`` to ``path`` atomically with mode 0600."""
    payload = {"format": FORMAT, **{k: v for k, v in asdict(bundle).items() if v != ""}}  # optional fields: if set
    write_private(path, json.dumps(payload, indent=1, sort_keys=True).encode())
    return path


def check_private(path: Path) -> None:
    """Raise :class:`BundlePermissionError` unless only the owner may read ``path``."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise BundlePermissionError(
            f"the bundle {path} has permissions {mode:04o}: group or others can read its private keys; "
            f"run 'chmod 600 {path}', and ask the coordinator to 'fedguard site rotate' this site "
            "if anyone else may have read it"
        )


def read_bundle(path: Path) -> SiteBundle:
    """Read and check a bundle: owner-only permissions, known format, every field present.

    Raises
    ------
    BundlePermissionError
        The file is readable by group or others.
    BundleFormatError
        Not a fedguard bundle, or a field is missing or malformed.
    StateError
        The file cannot be read.
    """
    try:
        check_private(path)
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigurationError(f"no bundle at {path}; ask the coordinator for 'fedguard site enroll'") from exc
    except OSError as exc:
        raise StateError(f"cannot read the bundle {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleFormatError(f"{path} is not a fedguard site bundle (not JSON)") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleFormatError(f"{path} is not a fedguard site bundle (expected format '{FORMAT}')")
    required = [f.name for f in fields(SiteBundle) if f.default is MISSING and f.default_factory is MISSING]
    missing = [n for n in required if not isinstance(data.get(n), str) or not data[n]]
    optional = [f.name for f in fields(SiteBundle) if f.name not in required and f.name in data]
    missing += [n for n in optional if not isinstance(data[n], str)]
    if missing:
        raise BundleFormatError(f"the bundle {path} lacks {', '.join(missing)}; ask the coordinator for a new one")
    bundle = SiteBundle(**{n: data[n] for n in required + optional})
    try:
        bundle.he_secret_bytes()
    except (binascii.Error, ValueError) as exc:
        raise BundleFormatError(f"the bundle {path} has a damaged he_secret_context; ask for a new bundle") from exc
    host, _, port = bundle.endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise BundleFormatError(f"the bundle's endpoint '{bundle.endpoint}' is not host:port")
    return bundle
