"""The homomorphic-encryption backend interface and its registry.

A backend turns a flat float64 vector into an opaque :class:`Ciphertext`,
adds ciphertexts, moves them through messages as a list of byte strings,
and (only when it holds the secret key) decrypts. Sites hold a secret-key
backend; the coordinator a public one that can add but never decrypt.
Backends are created by name through :func:`create_backend`, as Opacus
creates accountants, so a second scheme (e.g. a threshold variant) plugs in
without touching the Flower adapters.

Notes
-----
Additively homomorphic aggregation of model updates follows Aono et al. 2017,
"Privacy-Preserving Deep Learning via Additively Homomorphic Encryption";
the CKKS scheme is Cheon, Kim, Kim & Song 2017, "Homomorphic Encryption for
Arithmetic of Approximate Numbers".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lifecycle.errors import ConfigurationError

Role = Literal["site", "coordinator"]


@dataclass(frozen=True)
class Ciphertext:
    """An encrypted vector of ``length`` values, stored as backend-specific ``chunks``."""

    chunks: tuple[Any, ...]
    length: int
    key_id: str


class HEBackend(ABC):
    """An additively homomorphic scheme bound to one federation key.

    Attributes
    ----------
    name : str
        Registry name of the scheme.
    key_id : str
        Fingerprint of the federation's public key; equal at every party of
        one federation, different across federations.
    max_abs : float
        Largest magnitude any slot of a *sum* may reach before it silently
        wraps around; callers bound their inputs so a sum stays below it.
    can_decrypt : bool
        Whether this instance holds the secret key.
    """

    name: str
    key_id: str
    max_abs: float

    @property
    @abstractmethod
    def can_decrypt(self) -> bool: ...

    @abstractmethod
    def encrypt(self, vector: np.ndarray) -> Ciphertext:
        """Encrypt a flat float vector."""

    @abstractmethod
    def add(self, ciphertexts: Sequence[Ciphertext]) -> Ciphertext:
        """The encryption of the element-wise sum (all of one length and key)."""

    @abstractmethod
    def decrypt(self, ciphertext: Ciphertext) -> np.ndarray:
        """The float64 plaintext; raises :class:`~privacy.he.errors.HEKeyError` without the secret key."""

    @abstractmethod
    def serialize(self, ciphertext: Ciphertext) -> list[bytes]:
        """One byte string per chunk, for a message."""

    @abstractmethod
    def deserialize(self, chunks: Sequence[bytes], length: int) -> Ciphertext:
        """Inverse of :meth:`serialize`; raises :class:`~privacy.he.errors.HEPayloadError` on garbage."""


BackendFactory = Callable[..., HEBackend]
_REGISTRY: dict[str, BackendFactory] = {}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make ``create_backend(name, ...)`` call ``factory(context, role=...)``."""
    _REGISTRY[name] = factory


def available_backends() -> tuple[str, ...]:
    """Names of the registered homomorphic backends (the built-in ones included), sorted."""
    _load_builtin()
    return tuple(sorted(_REGISTRY))


def create_backend(name: str, context: Path | bytes, *, role: Role) -> HEBackend:
    """A backend of scheme ``name`` loaded from a context file (or its bytes) for ``role``.

    Parameters
    ----------
    name : str
        Scheme name, e.g. ``"ckks"``.
    context : Path or bytes
        The serialized context: the secret one at a site, the public one at the coordinator.
    role : {"site", "coordinator"}
        Who loads it; a site refuses a public-only context, the coordinator a secret one.

    Raises
    ------
    ConfigurationError
        If no backend has that name.
    HEKeyError
        If the context is unusable for ``role``.
    """
    _load_builtin()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown homomorphic backend '{name}'; choose one of {', '.join(sorted(_REGISTRY))}"
        ) from None
    return factory(context, role=role)


def _load_builtin() -> None:
    if "ckks" not in _REGISTRY:
        from privacy.he import ckks  # noqa: F401  (registers itself)
