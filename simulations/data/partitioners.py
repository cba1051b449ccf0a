"""Split one pooled dataset among virtual sites the way real consortia differ.

A partition is named by a spec, ``name[:param]``, that
:func:`create_partitioner` turns into a :class:`Partitioner`:

``iid``
    Records shuffled and dealt out in near-equal shares: the homogeneous baseline.
``dirichlet:α``
    Label skew: for every class, the sites' shares of that class are drawn
    from Dir(α) (Hsu, Qi & Brown 2019); small α gives sites dominated by few
    classes, large α approaches IID. ``fedguard simulate --alpha`` is the α
    of the default partition (an empty spec means ``dirichlet:<alpha>``).
``by-column:COL``
    Real silos: one site per distinct value of column ``COL`` (a hospital id),
    so the number of sites is the number of values.
``quantity-skew:β``
    Quantity skew: site sizes drawn from Dir(β), labels IID within each site.

Every split is seeded (one :class:`numpy.random.Generator` per call), covers
every record exactly once, and gives every site at least ``min_size`` records
or raises :class:`~lifecycle.errors.ConfigurationError` saying what to change.

Notes
-----
Li, Diao, Chen & He 2022, "Federated Learning on Non-IID Data Silos: An
Experimental Study" (ICDE; NIID-Bench) define the label-distribution skew by
Dirichlet (``p_k ~ Dir_N(β)`` per class), the quantity skew
(``q ~ Dir_N(β)`` of the records, labels IID) and the homogeneous split used
here. Two departures, both for federations of hundreds of sites where the
paper's "redraw until every party has 10 records" loop never ends:
``dirichlet`` redraws up to ``max_tries`` times and then repairs the last draw
(each short site takes records at random from the largest site until it has
``min_size``); ``quantity-skew`` gives every site ``min_size`` records first
and splits the rest by Dir(β). Both only touch sites at the floor; the
skew of the others is the paper's.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lifecycle.errors import ConfigurationError

MIN_SITE_SIZE = 10
"""The fewest training records a virtual site gets (NIID-Bench's floor)."""


@dataclass(frozen=True)
class Partition:
    """Each site's record indices (disjoint, covering every record) and the site's group, if any.

    ``groups[i]`` names what made site ``i`` (``hospital_id=H3`` under
    ``by-column``); empty for the random partitioners.
    """

    spec: str
    sites: tuple[np.ndarray, ...]
    groups: tuple[str, ...] = ()

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.sites)


class Partitioner(ABC):
    """One way to split records among sites; :meth:`split` is seeded and checks the floor."""

    spec: str
    column: str | None = None
    """The column whose values the split needs (``by-column``), or None."""

    @abstractmethod
    def split(self, labels: np.ndarray, num_sites: int, *, seed: int, min_size: int = MIN_SITE_SIZE,
              column: np.ndarray | None = None) -> Partition:
        """Indices of each site's records.

        Raises
        ------
        ConfigurationError
            The records cannot give ``num_sites`` sites ``min_size`` records each.
        """

    def sites_for(self, column: np.ndarray | None) -> int | None:
        """How many sites the data itself fixes (``by-column``), or None when ``--sites`` decides."""
        del column
        return None


def _check_floor(total: int, num_sites: int, min_size: int, spec: str) -> None:
    if num_sites < 1:
        raise ConfigurationError(f"partition {spec}: need at least one site (got {num_sites})")
    if num_sites * min_size > total:
        raise ConfigurationError(f"partition {spec}: {total} training records cannot give {num_sites} sites "
                                 f"{min_size} records each; use fewer sites or more records")


class Iid(Partitioner):
    """Shuffle, then deal out near-equal shares (sizes differ by at most one)."""

    spec = "iid"

    def split(self, labels: np.ndarray, num_sites: int, *, seed: int, min_size: int = MIN_SITE_SIZE,
              column: np.ndarray | None = None) -> Partition:
        _check_floor(len(labels), num_sites, min_size, self.spec)
        order = np.random.default_rng(seed).permutation(len(labels))
        return Partition(self.spec, tuple(np.sort(p) for p in np.array_split(order, num_sites)))


class Dirichlet(Partitioner):
    """Label skew: each class's records shared among sites by Dir(α) (see the module Notes)."""

    def __init__(self, alpha: float, max_tries: int = 100) -> None:
        if not (math.isfinite(alpha) and alpha > 0):
            raise ConfigurationError(f"partition dirichlet:{alpha}: α must be a positive number, e.g. dirichlet:0.5")
        self.alpha = alpha
        self.max_tries = max_tries
        self.spec = f"dirichlet:{alpha:g}"

    def split(self, labels: np.ndarray, num_sites: int, *, seed: int, min_size: int = MIN_SITE_SIZE,
              column: np.ndarray | None = None) -> Partition:
        _check_floor(len(labels), num_sites, min_size, self.spec)
        rng = np.random.default_rng(seed)
        classes = np.unique(labels)
        by_class = [np.flatnonzero(labels == cls) for cls in classes]
        owner = np.empty(len(labels), dtype=np.int64)
        for _ in range(self.max_tries):
            for members in by_class:
                idx = rng.permutation(members)  # this order of draws reproduces earlier versions' splits
                shares = rng.dirichlet(np.full(num_sites, self.alpha))
                cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
                for site, chunk in enumerate(np.split(idx, cuts)):
                    owner[chunk] = site
            if np.bincount(owner, minlength=num_sites).min() >= min_size:
                break
        else:
            _repair(owner, num_sites, min_size, rng)
        return Partition(self.spec, _by_owner(owner, num_sites))


def _repair(owner: np.ndarray, num_sites: int, min_size: int, rng: np.random.Generator) -> None:
    """Move records at random from the largest site to each site below ``min_size`` (in place)."""
    counts = np.bincount(owner, minlength=num_sites)
    for site in np.flatnonzero(counts < min_size):
        while counts[site] < min_size:
            donor = int(counts.argmax())
            take = min(min_size - int(counts[site]), int(counts[donor]) - min_size)
            moved = rng.choice(np.flatnonzero(owner == donor), size=take, replace=False)
            owner[moved] = site
            counts[donor] -= take
            counts[site] += take


def _by_owner(owner: np.ndarray, num_sites: int) -> tuple[np.ndarray, ...]:
    order = np.argsort(owner, kind="stable")
    cuts = np.cumsum(np.bincount(owner, minlength=num_sites))[:-1]
    return tuple(np.sort(p).astype(np.int64) for p in np.split(order, cuts))


class QuantitySkew(Partitioner):
    """Quantity skew: sizes from Dir(β) above the floor, labels IID (see the module Notes)."""

    def __init__(self, beta: float) -> None:
        if not (math.isfinite(beta) and beta > 0):
            raise ConfigurationError(f"partition quantity-skew:{beta}: β must be a positive number, "
                                     "e.g. quantity-skew:0.5")
        self.beta = beta
        self.spec = f"quantity-skew:{beta:g}"

    def split(self, labels: np.ndarray, num_sites: int, *, seed: int, min_size: int = MIN_SITE_SIZE,
              column: np.ndarray | None = None) -> Partition:
        _check_floor(len(labels), num_sites, min_size, self.spec)
        rng = np.random.default_rng(seed)
        rest = len(labels) - num_sites * min_size
        shares = rng.dirichlet(np.full(num_sites, self.beta))
        extra = np.floor(shares * rest).astype(np.int64)
        extra[rng.choice(num_sites, size=rest - int(extra.sum()), replace=False)] += 1
        sizes = extra + min_size
        order = rng.permutation(len(labels))
        return Partition(self.spec, tuple(np.sort(p) for p in np.split(order, np.cumsum(sizes)[:-1])))


class ByColumn(Partitioner):
    """Real silos: one site per distinct value of a column, in sorted order of the values."""

    def __init__(self, column: str) -> None:
        if not column.strip():
            raise ConfigurationError("partition by-column needs a column name, e.g. by-column:hospital_id")
        self.column = column.strip()
        self.spec = f"by-column:{self.column}"

    def sites_for(self, column: np.ndarray | None) -> int | None:
        return len(np.unique(self._values(column)))

    def _values(self, column: np.ndarray | None) -> np.ndarray:
        if column is None:
            raise ConfigurationError(f"partition {self.spec}: the data has no column '{self.column}'")
        return column

    def split(self, labels: np.ndarray, num_sites: int, *, seed: int, min_size: int = MIN_SITE_SIZE,
              column: np.ndarray | None = None) -> Partition:
        del seed  # the data decides; nothing is drawn
        values, owner = np.unique(self._values(column), return_inverse=True)
        if len(values) != num_sites:
            raise ConfigurationError(
                f"partition {self.spec} gives {len(values)} sites (one per value of '{self.column}'), but "
                f"--sites is {num_sites}: leave --sites out (or 0) or pass --sites {len(values)}")
        counts = np.bincount(owner, minlength=len(values))
        small = [f"'{values[i]}' ({counts[i]})" for i in np.flatnonzero(counts < min_size)]
        if small:
            shown = ", ".join(small[:5]) + (f" and {len(small) - 5} more" if len(small) > 5 else "")
            raise ConfigurationError(
                f"partition {self.spec}: {len(small)} value(s) have fewer than {min_size} training records: "
                f"{shown}; merge or drop those silos in the file")
        return Partition(self.spec, _by_owner(owner, len(values)),
                         tuple(f"{self.column}={v}" for v in values.tolist()))


def _number(name: str, param: str, example: str) -> float:
    try:
        return float(param)
    except ValueError:
        raise ConfigurationError(f"partition {name}:{param}: '{param}' is not a number; e.g. {example}") from None


_REGISTRY: dict[str, tuple[Callable[[str], Partitioner], bool, str]] = {
    "iid": (lambda _: Iid(), False, "iid"),
    "dirichlet": (lambda p: Dirichlet(_number("dirichlet", p, "dirichlet:0.5")), True, "dirichlet:0.5"),
    "quantity-skew": (lambda p: QuantitySkew(_number("quantity-skew", p, "quantity-skew:0.5")), True,
                      "quantity-skew:0.5"),
    "by-column": (ByColumn, True, "by-column:hospital_id"),
}


def available_partitioners() -> tuple[str, ...]:
    """The spec forms :func:`create_partitioner` accepts, with an example parameter."""
    return tuple(example for _, _, example in _REGISTRY.values())


def create_partitioner(spec: str, *, alpha: float = 0.5) -> Partitioner:
    """The partitioner a spec names (``dirichlet:0.3``); an empty spec is ``dirichlet:<alpha>``.

    Raises
    ------
    ConfigurationError
        Unknown name, missing, extra or bad parameter.
    """
    spec = spec.strip()
    if not spec:
        return Dirichlet(alpha)
    name, sep, param = spec.partition(":")
    entry = _REGISTRY.get(name.strip())
    if entry is None:
        raise ConfigurationError(f"partition '{spec}': unknown; choose one of {', '.join(available_partitioners())}")
    make, takes_param, example = entry
    if takes_param and not param.strip():
        raise ConfigurationError(f"partition '{spec}' needs a parameter, e.g. {example}")
    if not takes_param and sep:
        raise ConfigurationError(f"partition '{spec}' takes no parameter; write {example}")
    return make(param.strip())


def dirichlet_partition(labels: np.ndarray, num_sites: int, alpha: float, *, seed: int,
                        min_size: int = MIN_SITE_SIZE) -> list[np.ndarray]:
    """Indices of each site's examples under ``dirichlet:α`` (the partition of earlier versions' API)."""
    return list(Dirichlet(alpha).split(labels, num_sites, seed=seed, min_size=min_size).sites)


def site_label_counts(labels: np.ndarray, sites: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """A (sites × classes) matrix of label counts."""
    return np.stack([np.bincount(labels[s], minlength=num_classes) for s in sites]) if sites else np.zeros(
        (0, num_classes), dtype=np.int64)
