"""The k-regular neighbour graph of a round: a circulant graph over a seeded permutation.

Nodes are placed on a ring in an order drawn from a public round seed;
each is joined to the ``⌊k/2⌋`` nodes on either side, and, when ``k`` is odd
(``n`` even), to the node diametrically opposite. Every node has exactly
``k`` neighbours, the relation is symmetric, and anyone holding the node
list and the seed recomputes the same graph (the sites check theirs).

Notes
-----
Bell et al. (2020), §3: replacing SecAgg's complete graph by a random
k-regular one with ``k = O(log n)`` brings the per-site cost from ``O(n)`` to
``O(log n)`` while keeping privacy and dropout robustness with high
probability, provided the server cannot choose the graph after seeing the
clients (here: the permutation comes from the round id, fixed at setup).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache

from privacy.secagg.errors import SecAggConfigError


@lru_cache(maxsize=8)
def _ring_order(nodes: tuple[int, ...], seed: bytes) -> tuple[int, ...]:
    """The nodes in the ring order drawn from ``seed``: one SHA-256 per node, computed once per round and process.

    Every site of a round computes the same ring; in a simulation one process serves many sites.
    """
    return tuple(sorted(nodes, key=lambda node: hashlib.sha256(seed + node.to_bytes(8, "big")).digest()))


def _ring(nodes: Sequence[int], k: int, seed: bytes) -> tuple[tuple[int, ...], set[int]]:
    """The ring order drawn from ``seed`` and the ring offsets of a node's neighbours."""
    n = len(nodes)
    if len(set(nodes)) != n:
        raise SecAggConfigError("node ids of a round must be distinct")
    if not 1 <= k < n:
        raise SecAggConfigError(f"a {k}-regular graph on {n} nodes needs 1 ≤ k < n")
    if k % 2 and n % 2:
        raise SecAggConfigError(f"a {k}-regular graph (k odd) needs an even number of nodes, got {n}")
    ring = _ring_order(tuple(nodes), seed)
    offsets = set(range(1, k // 2 + 1)) | {n - o for o in range(1, k // 2 + 1)}
    if k % 2:
        offsets.add(n // 2)
    return ring, offsets


def neighbour_graph(nodes: Sequence[int], k: int, seed: bytes) -> dict[int, tuple[int, ...]]:
    """Every node's ``k`` neighbours (sorted), for the ring order drawn from ``seed``."""
    ring, offsets = _ring(nodes, k, seed)
    n = len(ring)
    return {
        node: tuple(sorted(ring[(position + offset) % n] for offset in offsets))
        for position, node in enumerate(ring)
    }


def neighbours_of(nodes: Sequence[int], k: int, seed: bytes, node: int) -> tuple[int, ...]:
    """``neighbour_graph(nodes, k, seed)[node]`` without building the other nodes' lists (a site's view)."""
    ring, offsets = _ring(nodes, k, seed)
    position = ring.index(node)  # ValueError when node is not in the round (callers check first)
    return tuple(sorted(ring[(position + offset) % len(ring)] for offset in offsets))
