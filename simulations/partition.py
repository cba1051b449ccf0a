"""Split one dataset among virtual sites the way real consortia differ: non-IID.

Label skew by a Dirichlet prior (Hsu, Qi & Brown 2019, "Measuring the Effects
of Non-Identical Data Distribution for Federated Visual Classification"):
for every class, site shares are drawn from Dir(α); small α gives sites
dominated by few classes, large α approaches IID.
"""

from __future__ import annotations

import numpy as np

from lifecycle.errors import ConfigurationError


def dirichlet_partition(
    labels: np.ndarray, num_sites: int, alpha: float, *, seed: int, min_size: int = 10, max_tries: int = 1000
) -> list[np.ndarray]:
    """Indices of each site's examples; every site gets at least ``min_size``.

    Raises
    ------
    ConfigurationError
        If the data cannot give every site ``min_size`` examples.
    """
    if num_sites < 1 or alpha <= 0:
        raise ConfigurationError(f"need at least one site and α > 0 (got sites={num_sites}, α={alpha})")
    if num_sites * min_size > len(labels):
        raise ConfigurationError(
            f"{len(labels)} examples cannot give {num_sites} sites {min_size} examples each; use fewer sites"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_sites)]
        for cls in classes:
            idx = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(num_sites, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for site, chunk in enumerate(np.split(idx, cuts)):
                parts[site].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ConfigurationError(
        f"could not draw a partition with {min_size}+ examples per site in {max_tries} tries; "
        "raise α or use fewer sites"
    )
