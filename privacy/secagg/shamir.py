"""Shamir secret sharing of 32-byte secrets over the prime field ``GF(2^521 − 1)``.

A secret ``s`` becomes the constant term of a random polynomial of degree
``t − 1``; the share for a party at public point ``x ≠ 0`` is ``(x, f(x))``.
Any ``t`` shares give ``s`` back by Lagrange interpolation at 0; any ``t − 1``
shares are consistent with every possible secret (information-theoretic).

Notes
-----
Shamir (1979), "How to Share a Secret". Bonawitz et al. (2017) and Bell et
al. (2020) share each site's self-mask seed and mask-agreement key this way
so the server can rebuild exactly one of the two for each site. The field is
the Mersenne prime ``2^521 − 1`` (> 2^256, so any 32-byte secret embeds).
"""

from __future__ import annotations

import secrets as _secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from privacy.secagg.errors import SecAggAuthenticationError, SecAggConfigError

PRIME = (1 << 521) - 1
SECRET_BYTES = 32
_VALUE_BYTES = 66


@dataclass(frozen=True)
class Share:
    """One party's share: the public point ``x`` and ``y = f(x)``."""

    x: int
    y: int

    def to_bytes(self) -> bytes:
        return self.x.to_bytes(8, "big") + self.y.to_bytes(_VALUE_BYTES, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        if len(data) != 8 + _VALUE_BYTES:
            raise SecAggAuthenticationError(f"a Shamir share is {8 + _VALUE_BYTES} bytes, got {len(data)}")
        share = cls(int.from_bytes(data[:8], "big"), int.from_bytes(data[8:], "big"))
        if not (0 < share.x < PRIME and share.y < PRIME):
            raise SecAggAuthenticationError("a Shamir share lies outside the field")
        return share


def split(
    secret: bytes, points: Sequence[int], threshold: int, randbelow: Callable[[int], int] = _secrets.randbelow
) -> list[Share]:
    """Shares of ``secret`` for the parties at ``points``; any ``threshold`` of them rebuild it.

    Parameters
    ----------
    secret : bytes
        The 32-byte secret.
    points : Sequence[int]
        Distinct non-zero public evaluation points, one per party.
    threshold : int
        ``t``: the polynomial has degree ``t − 1``.
    randbelow : Callable[[int], int]
        Source of the random coefficients (``secrets.randbelow``; inject only in tests).
    """
    if len(secret) != SECRET_BYTES:
        raise SecAggConfigError(f"a shared secret is {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(points):
        raise SecAggConfigError(f"threshold {threshold} must be between 1 and the {len(points)} parties")
    if len(set(points)) != len(points) or any(not 0 < x < PRIME for x in points):
        raise SecAggConfigError("Shamir points must be distinct and non-zero")
    coefficients = [int.from_bytes(secret, "big")] + [randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in points:
        y = 0
        for coefficient in reversed(coefficients):
            y = (y * x + coefficient) % PRIME
        shares.append(Share(x, y))
    return shares


def combine(shares: Sequence[Share], threshold: int) -> bytes:
    """Rebuild the secret from ``threshold`` shares (the first ones given).

    Raises :class:`SecAggAuthenticationError` when fewer shares are given, points
    repeat, or the result is not a 32-byte secret (inconsistent shares).
    """
    chosen = list(shares)[:threshold]
    if len(chosen) < threshold:
        raise SecAggAuthenticationError(f"need {threshold} shares to rebuild a secret, got {len(chosen)}")
    xs = [share.x for share in chosen]
    if len(set(xs)) != len(xs):
        raise SecAggAuthenticationError("two shares carry the same point")
    secret = 0
    for i, share in enumerate(chosen):
        numerator, denominator = 1, 1
        for j, x in enumerate(xs):
            if j != i:
                numerator = numerator * (-x) % PRIME
                denominator = denominator * (share.x - x) % PRIME
        secret = (secret + share.y * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise SecAggAuthenticationError("the shares are inconsistent: they do not rebuild a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")
