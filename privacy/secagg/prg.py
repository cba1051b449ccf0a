"""Seed expansion: a 256-bit seed becomes a uint32 mask vector by AES-256-CTR.

The keystream of AES-256 in counter mode (key = seed, zero IV) is read as
little-endian uint32 words. The cipher writes straight into a reusable buffer
(``update_into``), and the mask is added into an accumulator in place, so
masking a vector costs one keystream pass and one vector add per seed.

The keystream is computed through OpenSSL's AES-GCM encryption, which is AES-CTR
keystream generation with the 32-bit counter layout of NIST SP 800-38D: with a
zero 96-bit IV it encrypts the counter blocks ``0^96 ‖ i`` for ``i = 2, 3, …``,
exactly blocks 2, 3, … of the zero-IV CTR keystream (while ``i < 2^32``). The
first two blocks come from CTR itself, so the output is byte for byte the
AES-256-CTR keystream (checked against CTR and ECB by tests). Which path is
faster depends on the CPU: OpenSSL's GCM code with AVX-512 VAES ran 1.6× its CTR
path on one x86 machine (the GHASH it computes on the side included; its tag is
never produced), while on an AMD EPYC with 256-bit VAES CTR alone ran 1.7× GCM.
So vectors of 64 KiB and more take the path that was faster in a one-off timing
per process (:func:`_gcm_is_faster`), and shorter ones CTR alone: for them
building a second cipher costs more than any keystream speed (8 against 21 µs
per 739-word mask). Vectors of 2^32 blocks (64 GiB) or more use CTR alone.

Notes
-----
Bonawitz et al. (2017) and Bell et al. (2020) expand every pairwise and self
mask from a short seed with a secure PRG; the security of masking reduces to
the PRG's. AES-CTR with a uniformly random 256-bit key is such a PRG (its
keystream is indistinguishable from random under the PRP assumption).
Flower's legacy SecAgg+ instead seeds ``numpy.random.RandomState`` (a
Mersenne Twister, not cryptographic) with the key folded to 32 bits.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
_IV = bytes(16)
_BLOCK = 16
_GCM_IV = bytes(12)
_HEAD = 2 * _BLOCK          # CTR blocks 0 and 1; GCM's keystream starts at block 2
_GCM_LIMIT = (1 << 32) - 2  # blocks GCM can produce from block 2 before its 32-bit counter wraps
_GCM_MIN_BYTES = 1 << 16    # shorter masks: CTR alone (one cipher object instead of two)
_CACHE = threading.local()


@functools.cache
def _gcm_is_faster() -> bool:
    """Whether this CPU's OpenSSL makes a 256 KiB keystream faster through GCM than through CTR.

    Timed once per process (best of three each, about a millisecond in all); both paths
    produce the same keystream, so the choice changes only the speed.
    """
    key, zeros = bytes(range(32)), bytes(1 << 18)
    out = bytearray(len(zeros) + _BLOCK - 1)

    def best(encryptor: Callable[[], Any]) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            encryptor().update_into(zeros, out)
            times.append(time.perf_counter() - started)
        return min(times)

    aes = algorithms.AES(key)
    return (best(lambda: Cipher(aes, modes.GCM(_GCM_IV)).encryptor())
            < best(lambda: Cipher(aes, modes.CTR(_IV)).encryptor()))


class MaskExpander:
    """Expands seeds into uint32 vectors of one fixed length, reusing its buffers."""

    def __init__(self, length: int) -> None:
        self.length = int(length)
        self._zeros = bytes(4 * self.length)
        self._buffer = bytearray(4 * self.length + _BLOCK - 1)
        self._view = np.frombuffer(self._buffer, dtype=np.uint32, count=self.length)
        size = 4 * self.length
        self._split = (_GCM_MIN_BYTES <= size and (size - _HEAD + _BLOCK - 1) // _BLOCK <= _GCM_LIMIT
                       and _gcm_is_faster())
        self._zeros_view, self._buffer_view = memoryview(self._zeros), memoryview(self._buffer)

    @classmethod
    def for_length(cls, length: int) -> MaskExpander:
        """The calling thread's expander for ``length`` words, reused across calls.

        Every expansion overwrites the whole buffer, so reuse carries nothing from one
        seed's mask into another's; reusing it spares allocating and page-faulting two
        vector-sized buffers per masked input (one expander per thread: the buffer is not
        shared). Like a freed buffer, it holds the last keystream until overwritten, in
        the process that computed it.
        """
        cached: MaskExpander | None = getattr(_CACHE, "expander", None)
        if cached is None or cached.length != int(length):
            cached = _CACHE.expander = cls(length)
        return cached

    def _fill(self, seed: bytes) -> np.ndarray:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"a mask seed is {SEED_BYTES} bytes, got {len(seed)}")
        aes = algorithms.AES(seed)
        if not self._split:
            Cipher(aes, modes.CTR(_IV)).encryptor().update_into(self._zeros, self._buffer)
            return self._view
        zeros, buffer = self._zeros_view, self._buffer_view
        Cipher(aes, modes.CTR(_IV)).encryptor().update_into(zeros[:_HEAD], buffer[:_HEAD + _BLOCK - 1])
        Cipher(aes, modes.GCM(_GCM_IV)).encryptor().update_into(zeros[_HEAD:], buffer[_HEAD:])
        return self._view

    def expand(self, seed: bytes) -> np.ndarray:
        """A fresh uint32 vector of ``length`` words from ``seed``."""
        return self._fill(seed).copy()

    def add(self, accumulator: np.ndarray, seed: bytes) -> None:
        """``accumulator += PRG(seed)`` modulo 2^32, in place."""
        np.add(accumulator, self._fill(seed), out=accumulator)

    def subtract(self, accumulator: np.ndarray, seed: bytes) -> None:
        """``accumulator −= PRG(seed)`` modulo 2^32, in place."""
        np.subtract(accumulator, self._fill(seed), out=accumulator)


def expand(seed: bytes, length: int) -> np.ndarray:
    """``PRG(seed)`` as ``length`` uint32 words (AES-256-CTR keystream)."""
    return MaskExpander(length).expand(seed)


def throughput(length: int = 1 << 20, repeats: int = 50) -> float:
    """Mask generation speed in GB/s (keystream written and added into an accumulator)."""
    expander = MaskExpander(length)
    accumulator = np.zeros(length, dtype=np.uint32)
    seeds = [bytes([i % 256]) * SEED_BYTES for i in range(repeats)]
    expander.add(accumulator, seeds[0])
    started = time.perf_counter()
    for seed in seeds:
        expander.add(accumulator, seed)
    return 4 * length * repeats / (time.perf_counter() - started) / 1e9
