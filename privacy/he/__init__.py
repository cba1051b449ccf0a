"""Homomorphic secure aggregation: sites encrypt, the coordinator adds, sites decrypt the sum.

The pieces, one module each:

- :mod:`privacy.he.backend` — the :class:`HEBackend` interface and ``create_backend(name, ...)``;
- :mod:`privacy.he.ckks` — the TenSEAL CKKS backend (chunked to 4096 slots);
- :mod:`privacy.he.keys` — creating and role-checked loading of the federation contexts;
- :mod:`privacy.he.instruction` — the ``"he"`` record of a train message;
- :mod:`privacy.he.codec` — ciphertexts and sums inside Flower records;
- :mod:`privacy.he.mod` — the site's client mod :func:`ckks_mod`;
- :mod:`privacy.he.strategy` — the coordinator's :class:`CKKSStrategy` wrapper.

See docs/homomorphic.md for parameters, key handling and the threat model.
"""

from privacy.he.backend import Ciphertext, HEBackend, available_backends, create_backend, register_backend
from privacy.he.errors import DecryptionRefused, HEAggregationError, HEKeyError, HEPayloadError
from privacy.he.keys import CKKSParameters, create_federation_keys, load_coordinator_context, load_site_context
from privacy.he.mod import ckks_mod
from privacy.he.strategy import CKKSStrategy

__all__ = [
    "CKKSParameters", "CKKSStrategy", "Ciphertext", "DecryptionRefused", "HEAggregationError", "HEBackend",
    "HEKeyError", "HEPayloadError", "available_backends", "ckks_mod", "create_backend", "create_federation_keys",
    "load_coordinator_context", "load_site_context", "register_backend",
]
