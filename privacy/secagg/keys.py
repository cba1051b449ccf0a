"""Key agreement and share encryption: X25519, HKDF-SHA256, AES-256-GCM.

Each site draws two fresh X25519 key pairs per round: one to agree channel
keys with its neighbours (the Shamir shares travel through the coordinator
encrypted under them), one to agree pairwise mask seeds. Every derived key
is bound by HKDF's ``info`` to its purpose, the round id and the ordered
pair of node ids; every ciphertext is bound by AES-GCM's associated data to
sender, recipient, round and stage, so a ciphertext moved to another pair,
round or stage fails authentication.

Notes
-----
Bonawitz et al. (2017) §4 use Diffie–Hellman key agreement composed with a
hash for both the channel keys and the mask seeds, and authenticated
encryption for the shares; Bell et al. (2020) keep that construction on the
neighbour graph. X25519 (RFC 7748) replaces Flower's P-384 (~15× faster
agreements here); HKDF is RFC 5869.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from privacy.secagg.errors import SecAggAuthenticationError

PROTOCOL = b"fedguard-secagg/v1"
KEY_BYTES = 32
_NONCE = 12
_RAW = serialization.Encoding.Raw


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair as raw 32-byte strings."""

    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        key = X25519PrivateKey.generate()
        private = key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        return cls(private, key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw))


def public_of(private: bytes) -> bytes:
    """The raw public key of a raw X25519 private key."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def pair_context(round_id: bytes, a: int, b: int) -> bytes:
    """``round_id ‖ min(a, b) ‖ max(a, b)``: both ends of a pair derive the same key."""
    low, high = sorted((a, b))
    return round_id + struct.pack(">QQ", low, high)


def agree(private: bytes, peer_public: bytes, purpose: bytes, context: bytes) -> bytes:
    """``HKDF-SHA256(X25519(private, peer_public), info = protocol ‖ purpose ‖ context)``."""
    return _agree(X25519PrivateKey.from_private_bytes(private), peer_public, purpose, context)


def _agree(key: X25519PrivateKey, peer_public: bytes, purpose: bytes, context: bytes) -> bytes:
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as error:
        raise SecAggAuthenticationError(f"X25519 key agreement refused a peer public key: {error}") from None
    return hkdf_sha256(shared, PROTOCOL + b"/" + purpose + b"/" + context)


_NO_SALT = bytes(hashlib.sha256().digest_size)


def hkdf_sha256(secret: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) with no salt and a 32-byte output, from two HMAC-SHA256 calls.

    Byte-for-byte ``HKDF(SHA256(), 32, salt=None, info=info).derive(secret)`` of ``cryptography``
    (checked by a test), without building a KDF object per derivation (it costs several times
    the two HMACs, and a site derives ``2k`` keys per round).
    """
    prk = hmac.digest(_NO_SALT, secret, "sha256")        # extract: salt = HashLen zero bytes
    return hmac.digest(prk, info + b"\x01", "sha256")    # expand: T(1), one block = 32 bytes


def _agree_all(
    private: bytes, peers: Mapping[int, bytes], purpose: bytes, round_id: bytes, me: int
) -> dict[int, bytes]:
    # Loading a raw X25519 private key costs a scalar multiplication (OpenSSL derives its public
    # key), as much as the agreement itself: load it once for all of a site's neighbours.
    key = X25519PrivateKey.from_private_bytes(private)
    return {peer: _agree(key, public, purpose, pair_context(round_id, me, peer)) for peer, public in peers.items()}


def mask_seed(private: bytes, peer_public: bytes, round_id: bytes, me: int, peer: int) -> bytes:
    """The 256-bit seed of the pairwise mask between ``me`` and ``peer`` in this round."""
    return agree(private, peer_public, b"pairwise-mask", pair_context(round_id, me, peer))


def channel_key(private: bytes, peer_public: bytes, round_id: bytes, me: int, peer: int) -> bytes:
    """The AES-256-GCM key protecting Shamir shares between ``me`` and ``peer`` in this round."""
    return agree(private, peer_public, b"share-channel", pair_context(round_id, me, peer))


def mask_seeds(private: bytes, peers: Mapping[int, bytes], round_id: bytes, me: int) -> dict[int, bytes]:
    """:func:`mask_seed` with every neighbour in ``peers`` (node id → mask public key), in one pass."""
    return _agree_all(private, peers, b"pairwise-mask", round_id, me)


def channel_keys(private: bytes, peers: Mapping[int, bytes], round_id: bytes, me: int) -> dict[int, bytes]:
    """:func:`channel_key` with every neighbour in ``peers`` (node id → channel public key), in one pass."""
    return _agree_all(private, peers, b"share-channel", round_id, me)


def associated_data(round_id: bytes, stage: str, sender: int, recipient: int) -> bytes:
    """What a share ciphertext is bound to: protocol, round, stage, sender → recipient."""
    return PROTOCOL + round_id + stage.encode() + struct.pack(">QQ", sender, recipient)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """``nonce ‖ AES-256-GCM(key, nonce, plaintext, aad)`` with a random 96-bit nonce."""
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, ciphertext: bytes, aad: bytes, what: str) -> bytes:
    """Decrypt :func:`seal`'s output; a forged, altered or misrouted ciphertext raises."""
    try:
        return AESGCM(key).decrypt(ciphertext[:_NONCE], ciphertext[_NONCE:], aad)
    except (InvalidTag, ValueError):
        raise SecAggAuthenticationError(
            f"{what} failed authentication (altered, forged, or sent for another pair, round or stage); "
            "it was discarded"
        ) from None


def equal(a: bytes, b: bytes) -> bool:
    """Constant-time equality of two byte strings."""
    return hmac.compare_digest(a, b)
