"""The federation's certificate authority: CA, coordinator TLS certificate, site credentials, CRL.

One federation has one private CA. It signs the coordinator's server
certificate (SANs for every host name and address sites dial, always
localhost/127.0.0.1/::1), one client certificate per site (CN = site name,
``clientAuth`` only), and the certificate revocation list that the
coordinator's TLS gateway enforces during the handshake. Each site also gets
an EC P-384 key pair for Flower's SuperNode authentication (an application
layer signature; Flower expects NIST curves, the private key in OpenSSH form).

Notes
-----
Certificates follow RFC 5280 profiles: the CA has ``basicConstraints CA:TRUE,
pathlen:0`` and only ``keyCertSign``/``cRLSign``; leaves have ``CA:FALSE`` and
the extended key usage of their role (``serverAuth`` or ``clientAuth``), so a
site certificate can never serve as the coordinator's and vice versa. Keys are
ECDSA P-384 (NIST SP 800-57 security level 192 bits; the curve Flower itself
uses for node keys). Serial numbers are 159 random bits (CA/B Forum BR §7.1
asks for at least 64 bits of CSPRNG output).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lifecycle.errors import ConfigurationError, StateError

CA_LIFETIME = timedelta(days=3650)
LEAF_LIFETIME = timedelta(days=397)
CRL_LIFETIME = timedelta(days=7)
LOOPBACK_NAMES: tuple[str, ...] = ("localhost",)
LOOPBACK_ADDRESSES: tuple[str, ...] = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM (PKCS#8, unencrypted) private key."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode authentication key pair in the forms Flower reads.

    ``private_openssh`` is what ``flower-supernode --auth-supernode-private-key``
    loads; ``public_pem`` (SubjectPublicKeyInfo) is what the SuperLink's Control
    API ``RegisterNode`` stores.
    """

    private_openssh: bytes = field(repr=False)
    public_pem: bytes

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.public_pem).hexdigest()


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str, federation: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"fedguard federation {federation}"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def fingerprint(cert: x509.Certificate) -> str:
    """Hex SHA-256 of the certificate's DER encoding (what ``openssl x509 -fingerprint -sha256`` shows)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def serial_hex(cert: x509.Certificate) -> str:
    """The serial number as lowercase hex (the registry's key for a certificate)."""
    return format(cert.serial_number, "x")


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """The federation's EC private key from its unencrypted PEM; anything else is a broken federation home."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise StateError("the federation key is not an EC key; re-run 'fedguard coordinator init'")
    return key


def create_ca(federation: str, *, now: datetime | None = None) -> KeyPair:
    """A self-signed federation CA (P-384, ten years, may sign leaves only)."""
    now = now or datetime.now(UTC)
    key = _new_key()
    name = _name(f"{federation} federation CA", federation)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _alt_names(hosts: Iterable[str], addresses: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in (*LOOPBACK_NAMES, *hosts):
        if host and host.lower() not in seen:
            seen.add(host.lower())
            names.append(x509.DNSName(host.lower()))
    for text in (*LOOPBACK_ADDRESSES, *addresses):
        try:
            address = ipaddress.ip_address(text)
        except ValueError as exc:
            raise ConfigurationError(f"'{text}' is not an IP address; pass host names with --host") from exc
        if str(address) not in seen:
            seen.add(str(address))
            names.append(x509.IPAddress(address))
    return names


def _leaf(ca: KeyPair, subject: x509.Name, key: ec.EllipticCurvePrivateKey, usage: x509.ObjectIdentifier,
          alt_names: Sequence[x509.GeneralName], now: datetime, lifetime: timedelta) -> x509.Certificate:
    ca_cert = ca.certificate
    ca_key = load_key(ca.key_pem)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(alt_names)), critical=False)
    return builder.sign(ca_key, hashes.SHA384())


def issue_server_certificate(ca: KeyPair, federation: str, hosts: Sequence[str] = (),
                             addresses: Sequence[str] = (), *, now: datetime | None = None) -> KeyPair:
    """The coordinator's TLS certificate, valid for ``hosts``/``addresses`` plus loopback."""
    now = now or datetime.now(UTC)
    key = _new_key()
    cert = _leaf(ca, _name(f"{federation} coordinator", federation), key, ExtendedKeyUsageOID.SERVER_AUTH,
                 _alt_names(hosts, addresses), now, LEAF_LIFETIME)
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_site_certificate(ca: KeyPair, federation: str, site: str, *, now: datetime | None = None) -> KeyPair:
    """A site's client certificate (CN = site name, ``clientAuth`` only)."""
    now = now or datetime.now(UTC)
    key = _new_key()
    cert = _leaf(ca, _name(site, federation), key, ExtendedKeyUsageOID.CLIENT_AUTH, (), now, LEAF_LIFETIME)
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def create_node_key() -> NodeKey:
    """A fresh P-384 key pair for Flower's SuperNode authentication."""
    key = _new_key()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return NodeKey(private, public)


def build_crl(ca: KeyPair, revoked: Iterable[tuple[str, datetime]], *, now: datetime | None = None) -> bytes:
    """A PEM CRL signed by the CA listing ``(serial_hex, revoked_at)`` pairs.

    The gateway loads it with ``VERIFY_CRL_CHECK_LEAF`` so that a revoked
    certificate fails the TLS handshake itself (alert ``certificate_revoked``).
    """
    now = now or datetime.now(UTC)
    ca_cert = ca.certificate
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now - timedelta(minutes=5)).next_update(now + CRL_LIFETIME))
    for serial, when in revoked:
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(int(serial, 16)).revocation_date(when).build())
    return builder.sign(load_key(ca.key_pem), hashes.SHA384()).public_bytes(serialization.Encoding.PEM)
