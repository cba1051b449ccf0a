"""Ciphertexts and decrypted sums in Flower records (``ArrayRecord`` of uint8 / float64).

Flower splits large arrays into 5 MiB chunks on the wire, so an ``ArrayRecord``
of uint8 arrays (one per ciphertext) is the robust carrier for megabytes of
ciphertext; ``ConfigRecord`` bytes values are not chunked.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from privacy.he.backend import Ciphertext, HEBackend
from privacy.he.errors import HEPayloadError


def ciphertext_record(backend: HEBackend, ciphertext: Ciphertext) -> ArrayRecord:
    """One uint8 array per ciphertext chunk, named ``chunk-00000``, ``chunk-00001``, and so on."""
    return ArrayRecord({
        f"chunk-{index:05d}": Array(np.frombuffer(blob, dtype=np.uint8).copy())
        for index, blob in enumerate(backend.serialize(ciphertext))
    })


def read_ciphertext(backend: HEBackend, record: ArrayRecord, length: int) -> Ciphertext:
    """Inverse of :func:`ciphertext_record` under ``backend``'s key."""
    chunks = []
    for key in sorted(record.keys()):
        array = record[key]
        if array.dtype != "uint8" or len(array.shape) != 1:
            raise HEPayloadError(f"ciphertext chunk '{key}' is {array.dtype}{list(array.shape)}, not a uint8 vector")
        chunks.append(array.numpy().tobytes())
    return backend.deserialize(chunks, length)


def sum_record(vector: np.ndarray) -> ArrayRecord:
    """A decrypted sum as the one float64 array ``payload``: the carrier of a decrypt reply."""
    return ArrayRecord({"payload": Array(np.ascontiguousarray(vector, dtype=np.float64))})


def read_sum(record: ArrayRecord) -> np.ndarray:
    """Inverse of :func:`sum_record`, refusing any other layout or a non-finite vector."""
    if list(record.keys()) != ["payload"]:
        raise HEPayloadError("a decrypt reply must hold exactly one array named 'payload'")
    vector = record["payload"].numpy().astype(np.float64, copy=False)
    if vector.ndim != 1 or not np.all(np.isfinite(vector)):
        raise HEPayloadError("the decrypted aggregate is not a finite vector")
    return vector
