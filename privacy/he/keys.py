"""Federation keys for the CKKS mode: who holds which TenSEAL context.

Two files come out of :func:`create_federation_keys`:

``he-secret-context.bin`` (0600)
    The full context *with the secret key*. Every site of the federation gets
    the same one; the coordinator never does. In a deployment it travels out
    of band, inside each site's enrolment bundle (or from the consortium's
    key custodian), and the SuperNode points at it with
    ``--node-config "he-secret-context='/path/he-secret-context.bin'"``.
``he-public-context.bin``
    Parameters and public key only: no secret key, no Galois or
    relinearization keys (addition needs none). It can encrypt and add but
    not decrypt; it is all the coordinator ever holds.

Loading is role-checked: :func:`load_coordinator_context` refuses a context
that holds a secret key, :func:`load_site_context` one that does not.

Notes
-----
Parameters follow the HomomorphicEncryption.org standard (Albrecht et al.
2018, "Homomorphic Encryption Security Standard"): N = 8192 allows 218
modulus bits at 128-bit classical security; fedguard uses 180. See
docs/homomorphic.md for the error budget behind the scale.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import tenseal as ts  # type: ignore[import-untyped]

from lifecycle.home import write_private
from privacy.he.errors import HEKeyError

logger = logging.getLogger("fedguard.privacy")

SECRET_CONTEXT_NAME = "he-secret-context.bin"
PUBLIC_CONTEXT_NAME = "he-public-context.bin"


@dataclass(frozen=True)
class CKKSParameters:
    """One CKKS parameter set (fedguard's profile by default).

    Attributes
    ----------
    poly_modulus_degree : int
        Ring dimension N; a ciphertext packs N/2 values.
    coeff_mod_bit_sizes : tuple of int
        Prime sizes of the modulus chain; the last is the special prime, the
        others hold data (no multiplication is ever done, so no level is spent).
    scale_bits : int
        log2 of the encoding scale: values are stored as round(v · 2^scale_bits).
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 60, 60)
    scale_bits: int = 80

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def max_abs(self) -> float:
        """Largest slot magnitude a sum may reach: q_data / 2 / scale."""
        return float(2.0 ** (sum(self.coeff_mod_bit_sizes[:-1]) - 1 - self.scale_bits))


DEFAULT_PARAMETERS = CKKSParameters()


def new_context(params: CKKSParameters = DEFAULT_PARAMETERS) -> ts.Context:
    """A fresh secret context (new secret key) with ``params``."""
    context = ts.context(
        ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree, coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes)
    )
    context.global_scale = 2.0**params.scale_bits
    return context


def public_bytes(context: ts.Context) -> bytes:
    """The context without secret, Galois or relinearization keys."""
    return bytes(context.serialize(save_public_key=True, save_secret_key=False,
                                   save_galois_keys=False, save_relin_keys=False))


def secret_bytes(context: ts.Context) -> bytes:
    """The context with its secret and public keys (no Galois or relinearization keys)."""
    return bytes(context.serialize(save_public_key=True, save_secret_key=True,
                                   save_galois_keys=False, save_relin_keys=False))


def key_id(context: ts.Context) -> str:
    """Fingerprint of the federation key: SHA-256 of the public context, first 16 hex digits.

    The serialization is deterministic, so a site (from its secret context) and
    the coordinator (from the public one) compute the same value.
    """
    return hashlib.sha256(public_bytes(context)).hexdigest()[:16]


def create_federation_keys(
    site_dir: Path, coordinator_dir: Path, params: CKKSParameters = DEFAULT_PARAMETERS
) -> tuple[Path, Path]:
    """Generate one federation key and write the site and coordinator contexts.

    Parameters
    ----------
    site_dir : Path
        Where the secret context goes (0600). Only sites may read it.
    coordinator_dir : Path
        Where the public context goes. Must not be ``site_dir``.
    params : CKKSParameters
        Scheme parameters (fedguard's profile by default).

    Returns
    -------
    tuple of Path
        ``(secret_context_path, public_context_path)``.

    Raises
    ------
    HEKeyError
        If both directories are the same (the coordinator would sit next to the secret key).
    """
    if Path(site_dir).resolve() == Path(coordinator_dir).resolve():
        raise HEKeyError("the site and coordinator key directories must differ; "
                         "the coordinator must never be able to read the secret context")
    context = new_context(params)
    secret_path = Path(site_dir) / SECRET_CONTEXT_NAME
    public_path = Path(coordinator_dir) / PUBLIC_CONTEXT_NAME
    write_private(secret_path, secret_bytes(context))
    public_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.write_bytes(public_bytes(context))
    logger.info("created CKKS federation key %s", key_id(context))
    return secret_path, public_path


def _read(source: Path | bytes, what: str) -> ts.Context:
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise HEKeyError(f"cannot read the {what} '{source}' ({exc.strerror or exc}); "
                             "check the path given to fedguard") from exc
    try:
        context = ts.context_from(data)
    except Exception as exc:  # TenSEAL raises bare ValueError/RuntimeError from C++
        raise HEKeyError(f"the {what} is not a TenSEAL context ({exc}); "
                         "regenerate it with create_federation_keys") from exc
    if context.global_scale != 2.0**DEFAULT_PARAMETERS.scale_bits:
        raise HEKeyError(f"the {what} uses scale {context.global_scale:g}, not fedguard's "
                         f"2^{DEFAULT_PARAMETERS.scale_bits}; regenerate it with create_federation_keys")
    return context


def load_site_context(source: Path | bytes) -> ts.Context:
    """The secret context a site decrypts with; refuses a public-only context.

    Raises
    ------
    HEKeyError
        If it is missing, not a context, or holds no secret key.
    """
    context = _read(source, "site secret context")
    if not context.is_private():
        raise HEKeyError("the site context holds no secret key (it is the coordinator's public context); "
                         "give the site the secret context from its enrolment bundle")
    if isinstance(source, Path) and stat.S_IMODE(os.stat(source).st_mode) & 0o077:
        logger.warning("secret context %s is readable by other users; chmod 600 it", source)
    return context


def load_coordinator_context(source: Path | bytes) -> ts.Context:
    """The public context the coordinator adds with; refuses one that holds a secret key.

    Raises
    ------
    HEKeyError
        If it is missing, not a context, or holds the secret key.
    """
    context = _read(source, "coordinator public context")
    if context.is_private():
        raise HEKeyError("the coordinator was given a context holding the secret key; "
                         "give it only the public context (he-public-context.bin) and "
                         "treat this secret key as exposed: generate a new federation key")
    return context
