"""The CKKS backend: TenSEAL vectors chunked to the slot count.

A payload of ``n`` values becomes ``ceil(n / 4096)`` ciphertexts of N = 8192
(4096 slots each). Chunking ourselves keeps TenSEAL from packing a longer
vector its own way (and from printing its warning about it, which cannot be
silenced from Python).

Notes
-----
CKKS (Cheon, Kim, Kim & Song 2017) is approximate: decryption returns the sum
plus a small error. With no multiplication the error is the encoding and
fresh-encryption noise divided by the scale (2^80 here), far below float64
rounding of the summed values; see docs/homomorphic.md for measurements.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tenseal as ts  # type: ignore[import-untyped]

from privacy.he.backend import Ciphertext, HEBackend, Role, register_backend
from privacy.he.errors import HEKeyError, HEPayloadError
from privacy.he.keys import DEFAULT_PARAMETERS, CKKSParameters, key_id, load_coordinator_context, load_site_context


class CKKSBackend(HEBackend):
    """TenSEAL CKKS under one federation context.

    Parameters
    ----------
    context : tenseal.Context
        A secret context (site) or a public one (coordinator).
    params : CKKSParameters
        The parameter set the context was made with (sets the chunk size and headroom).
    """

    name = "ckks"

    def __init__(self, context: ts.Context, params: CKKSParameters = DEFAULT_PARAMETERS) -> None:
        self._context = context
        self.params = params
        self.key_id = key_id(context)
        self.max_abs = params.max_abs

    @classmethod
    def load(cls, source: Path | bytes, *, role: Role) -> CKKSBackend:
        """Load the site's secret or the coordinator's public context (role-checked)."""
        loader = load_site_context if role == "site" else load_coordinator_context
        return cls(loader(source))

    @property
    def can_decrypt(self) -> bool:
        return bool(self._context.is_private())

    def encrypt(self, vector: np.ndarray) -> Ciphertext:
        values = np.asarray(vector, dtype=np.float64).ravel()
        if not np.all(np.isfinite(values)):
            raise HEPayloadError("cannot encrypt NaN or infinite values")
        if values.size and float(np.abs(values).max()) >= self.max_abs:
            raise HEPayloadError(f"values up to {float(np.abs(values).max()):.3g} exceed the CKKS headroom "
                                 f"{self.max_abs:.3g}; lower clip-norm or max-weight")
        slots = self.params.slots
        chunks = tuple(ts.ckks_vector(self._context, values[i:i + slots]) for i in range(0, values.size, slots))
        return Ciphertext(chunks, int(values.size), self.key_id)

    def add(self, ciphertexts: Sequence[Ciphertext]) -> Ciphertext:
        if not ciphertexts:
            raise HEPayloadError("nothing to add: no ciphertexts")
        first = ciphertexts[0]
        for other in ciphertexts[1:]:
            if other.length != first.length or other.key_id != first.key_id:
                raise HEPayloadError("ciphertexts differ in length or federation key and cannot be added")
        chunks = list(first.chunks)
        for other in ciphertexts[1:]:
            for index, chunk in enumerate(other.chunks):
                chunks[index] = chunks[index] + chunk
        return Ciphertext(tuple(chunks), first.length, first.key_id)

    def decrypt(self, ciphertext: Ciphertext) -> np.ndarray:
        if not self.can_decrypt:
            raise HEKeyError("this CKKS context holds no secret key and cannot decrypt; "
                             "only sites decrypt, and only aggregates")
        if ciphertext.key_id != self.key_id:
            raise HEPayloadError(f"the ciphertext was made under federation key {ciphertext.key_id}, "
                                 f"this site holds {self.key_id}")
        secret_key = self._context.secret_key()
        try:
            parts = [np.asarray(chunk.decrypt(secret_key=secret_key), dtype=np.float64) for chunk in ciphertext.chunks]
        except Exception as exc:  # TenSEAL raises bare C++ errors
            raise HEPayloadError(f"the ciphertext does not decrypt under this federation key ({exc})") from exc
        vector = np.concatenate(parts) if parts else np.zeros(0)
        if vector.shape != (ciphertext.length,):
            raise HEPayloadError(f"decrypted {vector.size} values, expected {ciphertext.length}")
        return vector

    def serialize(self, ciphertext: Ciphertext) -> list[bytes]:
        return [bytes(chunk.serialize()) for chunk in ciphertext.chunks]

    def deserialize(self, chunks: Sequence[bytes], length: int) -> Ciphertext:
        expected = -(-int(length) // self.params.slots)
        if len(chunks) != expected:
            raise HEPayloadError(f"{len(chunks)} ciphertext chunks for {length} values; expected {expected}")
        try:
            vectors = tuple(ts.ckks_vector_from(self._context, bytes(chunk)) for chunk in chunks)
        except Exception as exc:  # TenSEAL raises bare C++ errors on garbage
            raise HEPayloadError(f"a ciphertext chunk does not parse under this federation key ({exc})") from exc
        sizes = [v.size() for v in vectors]
        if any(s != self.params.slots for s in sizes[:-1]) or (sizes and sum(sizes) != length):
            raise HEPayloadError(f"ciphertext chunks hold {sum(sizes)} values, expected {length}")
        return Ciphertext(vectors, int(length), self.key_id)


register_backend("ckks", CKKSBackend.load)
