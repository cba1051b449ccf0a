"""A site's withdrawal of consent, as one signed statement both sides read the same way.

The site agent writes it (``fedguard client withdraw``), the coordinator's
operator records it (``fedguard site withdraw NAME --statement FILE``). It
names the site, the scope (the whole site, or a list of its records) and,
for records, only their **count** and a **salted digest** of the list
(:func:`records_digest`): the record identifiers never leave the site in the
clear (issue 14, point 4; DESIGN.md §5).

File format: UTF-8 JSON, one object::

    {"format": "fedguard-consent-withdrawal/1",
     "statement": {"site", "scope", "record-count", "records-digest", "reason", "issued-at"},
     "key": "<SHA-256 of the site's node public key PEM>",
     "signature": "<base64 DER ECDSA signature>"}

The signature covers :data:`DOMAIN` followed by the statement's canonical
bytes (:meth:`WithdrawalStatement.canonical_bytes`: sorted keys, no spaces),
made with the site's SuperNode node key from its bundle. The coordinator
keeps only public halves of a site's credentials (``SiteCredential``), and
the node public key is one of them, so it verifies the statement against
exactly the key it enrolled for that site: the withdrawal keys on the site's
enrolled identity, never on a name it reports (DESIGN.md §5).

Notes
-----
The signature is ECDSA over P-384 with SHA-384 (FIPS 186-5, §6; curve from
SP 800-186), the curve of the node key fedguard issues. The domain prefix
keeps a withdrawal signature from ever being valid for another message the
same key signs (Flower's SuperNode authentication signs its own payloads).
The records digest is a hash commitment (Halevi & Micali, "Practical and
provably-secure commitment schemes from collision-free hashing", CRYPTO 1996):
with a 128-bit random salt that stays at the site, the coordinator cannot
test guessed identifiers against it (record numbers are small, enumerable
spaces), while the site can later open it, by showing the salt and the list,
to prove what it withdrew.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from federation.schema import canonical, is_missing
from federation.tabular import read_csv_rows, read_utf8_text
from lifecycle.errors import ConfigurationError, VerificationError

FORMAT = "fedguard-consent-withdrawal/1"
DOMAIN = b"fedguard-consent-withdrawal/1\n"
"""Prefix of every signed message: a withdrawal signature is valid for nothing else."""
SITE = "site"
RECORDS = "records"
SCOPES: tuple[str, ...] = (SITE, RECORDS)
SALT_BYTES = 16
MAX_REASON = 512
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def validate_site(name: str) -> str:
    """``name`` unchanged if it can name a site in a withdrawal (1-64 letters, digits, ``.``, ``_``, ``-``)."""
    if not _SITE_NAME.fullmatch(name):
        raise ConfigurationError(f"invalid site name {name[:64]!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def clean_reason(reason: str) -> str:
    """A reason fit for the registry and the audit trail: printable characters, at most 512."""
    return "".join(c if c.isprintable() else " " for c in reason).strip()[:MAX_REASON]


def canonical_id(value: object) -> str:
    """A record identifier as both sides compare and hash it (``federation.schema.canonical``: ``7`` = ``7.0``)."""
    return canonical(value)


def new_salt() -> bytes:
    """A fresh 128-bit salt from the operating system's CSPRNG (it stays at the site)."""
    return secrets.token_bytes(SALT_BYTES)


def records_digest(ids: Iterable[object], salt: bytes) -> str:
    """SHA-256 over ``salt``, then the sorted, de-duplicated canonical ids, each length-prefixed.

    The one function both sides call. Each id is its UTF-8 bytes after a
    4-byte big-endian length, so no two different lists hash the same
    bytes (``["ab", "c"]`` vs ``["a", "bc"]``). Order and repeats in the
    input do not matter.

    Raises
    ------
    ConfigurationError
        The salt is shorter than 16 bytes, or an id is empty.
    """
    if len(salt) < SALT_BYTES:
        raise ConfigurationError(f"a records digest needs a salt of at least {SALT_BYTES} bytes")
    keys = {canonical_id(value) for value in ids}
    if "" in keys:
        raise ConfigurationError("a record id is empty; remove empty lines from the list")
    digest = hashlib.sha256(salt)
    for key in sorted(keys):
        raw = key.encode("utf-8")
        digest.update(len(raw).to_bytes(4, "big"))
        digest.update(raw)
    return digest.hexdigest()


def read_ids(path: Path, column: str | None = None) -> list[str]:
    """The record ids of a CSV with a header row: the column ``column``, or the file's only column.

    Empty cells are skipped; repeats are kept (:func:`records_digest` drops them).

    Raises
    ------
    ConfigurationError
        The file is missing, lacks the column, has several columns and none was named, or holds no id.
    """
    header, rows = read_csv_rows(path)
    if column is None:
        if len(header) != 1:
            raise ConfigurationError(f"'{path}' has {len(header)} columns; name the id column "
                                     "(--id-column, or id-column in the site's schema)")
        column = header[0]
    if column not in header:
        raise ConfigurationError(f"'{path}' has no column '{column}'; its header is {header[:8]}")
    index = header.index(column)
    ids = [canonical_id(row[index]) for _, row in rows if index < len(row) and not is_missing(row[index])]
    if not ids:
        raise ConfigurationError(f"'{path}' holds no record id under '{column}'")
    return ids


def _utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class WithdrawalStatement:
    """What a site withdraws: the whole site, or ``record_count`` records committed to by ``records_digest``."""

    site: str
    scope: str
    record_count: int | None
    records_digest: str
    reason: str
    issued_at: str
    """ISO 8601, UTC, seconds."""

    def __post_init__(self) -> None:
        validate_site(self.site)
        if self.scope not in SCOPES:
            raise ConfigurationError(f"withdrawal scope must be one of {SCOPES}, got {self.scope!r}")
        if self.scope == SITE and (self.record_count is not None or self.records_digest):
            raise ConfigurationError("a whole-site withdrawal carries no record count or digest")
        if self.scope == RECORDS:
            if not isinstance(self.record_count, int) or isinstance(self.record_count, bool) \
                    or self.record_count < 1:
                raise ConfigurationError("a records withdrawal needs a record count of at least 1")
            if not _HEX64.fullmatch(self.records_digest):
                raise ConfigurationError("a records withdrawal needs a records digest (64 lowercase hex digits)")
        if clean_reason(self.reason) != self.reason or not self.reason:
            raise ConfigurationError("a withdrawal needs a reason of printable text (at most 512 characters)")
        try:
            datetime.fromisoformat(self.issued_at)
        except ValueError:
            raise ConfigurationError(f"issued-at {self.issued_at[:40]!r} is not an ISO 8601 time") from None

    @classmethod
    def create(cls, site: str, scope: str, reason: str, *, record_count: int | None = None,
               records_digest: str = "", now: datetime | None = None) -> WithdrawalStatement:
        """A statement issued now (``now`` for tests); the reason is cleaned first."""
        return cls(site, scope, record_count, records_digest, clean_reason(reason), _utc_iso(now or datetime.now(UTC)))

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "scope": self.scope, "record-count": self.record_count,
                "records-digest": self.records_digest, "reason": self.reason, "issued-at": self.issued_at}

    def canonical_bytes(self) -> bytes:
        """Sorted keys, no spaces, UTF-8: the bytes the signature covers (after :data:`DOMAIN`)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WithdrawalStatement:
        try:
            count = data["record-count"]
            return cls(str(data["site"]), str(data["scope"]), count if count is None else int(count),
                       str(data["records-digest"]), str(data["reason"]), str(data["issued-at"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"the withdrawal statement lacks or mistypes {exc}") from None


@dataclass(frozen=True)
class SignedStatement:
    """A statement, the fingerprint of the node key that signed it, and the signature (base64 DER)."""

    statement: WithdrawalStatement
    key: str
    signature: str

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "statement": self.statement.to_dict(), "key": self.key,
                           "signature": self.signature}, indent=1, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "<statement>") -> SignedStatement:
        """Parse a statement file (:meth:`to_json`).

        Raises
        ------
        ConfigurationError
            Not a fedguard withdrawal statement, or a field is missing or malformed.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise ConfigurationError(f"'{source}' is not a withdrawal statement (not JSON)") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("statement"), dict):
            raise ConfigurationError(f"'{source}' is not a withdrawal statement (expected format '{FORMAT}')")
        key, signature = data.get("key"), data.get("signature")
        if not isinstance(key, str) or not _HEX64.fullmatch(key) or not isinstance(signature, str) or not signature:
            raise ConfigurationError(f"'{source}' lacks its signing key fingerprint or its signature")
        return cls(WithdrawalStatement.from_dict(data["statement"]), key, signature)

    @classmethod
    def read(cls, path: Path) -> SignedStatement:
        return cls.from_json(read_utf8_text(path, "withdrawal statement"), source=str(path))


def key_fingerprint(public_pem: str) -> str:
    """SHA-256 of a node public key's PEM text: the ``node_key_fingerprint`` the coordinator registered."""
    return hashlib.sha256(public_pem.encode()).hexdigest()


def sign_statement(statement: WithdrawalStatement, node_key: str, node_public_key: str) -> SignedStatement:
    """Sign ``statement`` with the site's node key (OpenSSH or PEM private key text, from its bundle).

    Raises
    ------
    ConfigurationError
        The key is not an elliptic-curve private key.
    """
    raw = node_key.encode()
    try:
        key = (serialization.load_ssh_private_key(raw, password=None) if b"OPENSSH" in raw
               else serialization.load_pem_private_key(raw, password=None))
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"the bundle's node key cannot be read ({exc}); ask for a new bundle") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigurationError("the bundle's node key is not an elliptic-curve key; ask for a new bundle")
    signature = key.sign(DOMAIN + statement.canonical_bytes(), ec.ECDSA(hashes.SHA384()))
    return SignedStatement(statement, key_fingerprint(node_public_key), base64.b64encode(signature).decode())


def verify_statement(signed: SignedStatement, public_pem: str) -> None:
    """Check ``signed`` against the node public key the coordinator enrolled for the site (PEM).

    Raises
    ------
    VerificationError
        The key is not the one named, or the signature does not verify (the statement was altered,
        or signed by another key).
    """
    if key_fingerprint(public_pem) != signed.key:
        raise VerificationError("the withdrawal statement names another signing key than the one given")
    try:
        public = serialization.load_pem_public_key(public_pem.encode())
        signature = base64.b64decode(signed.signature, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise VerificationError(f"the withdrawal statement's key or signature is malformed ({exc})") from None
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise VerificationError("the site's enrolled node key is not an elliptic-curve key")
    try:
        public.verify(signature, DOMAIN + signed.statement.canonical_bytes(), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise VerificationError(f"the withdrawal statement of site '{signed.statement.site}' does not verify "
                                "against the site's enrolled key: it was altered or signed by another key") from None
