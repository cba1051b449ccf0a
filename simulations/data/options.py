"""The data choices of a simulation (``--dataset``, ``--data``, ``--schema``, ``--partition``, …) and their checks.

:class:`DataOptions` is what :class:`simulations.federation.SimulationConfig`
and ``fedguard data partition`` share, so the preview splits exactly as the
run will; it imports neither torch nor Flower.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from federation.defaults import DEFAULT_SEED
from lifecycle.errors import ConfigurationError
from simulations.data.partitioners import ByColumn, create_partitioner

DEFAULT_SITES = 5
DEFAULT_DATASET = "breast-cancer"
SYNTHETIC = "synthetic"
SYNTHETIC_RECORDS = 10_000
SYNTHETIC_FEATURES = 20


class HasDataOptions(Protocol):
    """Anything with the data fields of a simulation (``SimulationConfig``)."""

    @property
    def dataset(self) -> str: ...
    @property
    def data(self) -> str: ...
    @property
    def schema(self) -> str: ...
    @property
    def partition(self) -> str: ...
    @property
    def alpha(self) -> float: ...
    @property
    def records(self) -> int: ...
    @property
    def features(self) -> int: ...
    @property
    def sites(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def test_fraction(self) -> float: ...


@dataclass(frozen=True)
class DataOptions:
    """Where the records come from and how they are split; see ``docs/research.md``."""

    dataset: str = DEFAULT_DATASET
    data: str = ""
    schema: str = ""
    partition: str = ""
    alpha: float = 0.5
    records: int = 0
    features: int = 0
    sites: int = DEFAULT_SITES
    seed: int = DEFAULT_SEED
    test_fraction: float = 0.2

    @classmethod
    def of(cls, cfg: HasDataOptions) -> DataOptions:
        return cls(cfg.dataset, cfg.data, cfg.schema, cfg.partition, cfg.alpha, cfg.records, cfg.features,
                   cfg.sites, cfg.seed, cfg.test_fraction)

    @property
    def name(self) -> str:
        """The data's name: the file's stem for ``--data``, else the dataset (the default model name)."""
        return Path(self.data).stem if self.data else self.dataset.partition(":")[0]

    def check(self) -> None:
        """Refuse contradictory or incomplete data flags, naming them (no file is read here).

        Raises
        ------
        ConfigurationError
            One line naming the flags and what to pass instead.
        """
        from simulations.data.sources import available_sources  # sklearn's loaders: only when checking

        if self.data and not self.schema:
            raise ConfigurationError(f"--data {self.data} needs --schema: the site schema (TOML or JSON) that says "
                                     "which columns are features and which is the label (docs/site-data.md)")
        if self.schema and not self.data:
            raise ConfigurationError(f"--schema {self.schema} describes a file passed with --data; pass --data FILE "
                                     "too, or leave --schema out for a bundled dataset")
        if self.data and self.dataset != DEFAULT_DATASET:
            raise ConfigurationError(f"--data {self.data} and --dataset {self.dataset} both name the records; "
                                     "pass one of them")
        if not self.data and self.dataset.partition(":")[0] not in available_sources():
            raise ConfigurationError(f"--dataset {self.dataset}: unknown; choose one of "
                                     f"{', '.join(available_sources())}, or pass your own file with --data")
        synthetic = not self.data and self.dataset.partition(":")[0] == SYNTHETIC
        for flag, value in (("--records", self.records), ("--features", self.features)):
            if value < 0:
                raise ConfigurationError(f"{flag} {value}: must be positive (0: the default)")
            if value and not synthetic:
                raise ConfigurationError(f"{flag} {value} sizes the generated data: it needs --dataset synthetic")
        if self.partition.strip() and self.alpha != 0.5:
            raise ConfigurationError(f"--alpha {self.alpha} is the α of the default partition; with --partition "
                                     f"{self.partition} put the parameter in the spec (e.g. dirichlet:{self.alpha:g})")
        if not self.partition.strip() and not self.alpha > 0:
            raise ConfigurationError(f"--alpha {self.alpha}: the Dirichlet α must be positive")
        partitioner = create_partitioner(self.partition, alpha=self.alpha)
        if self.sites < 0 or (self.sites == 0 and not isinstance(partitioner, ByColumn)):
            raise ConfigurationError(f"--sites {self.sites}: a federation needs at least 1 site (0 means one site "
                                     "per value only with --partition by-column:COL)")

    def with_sites(self, sites: int) -> DataOptions:
        return replace(self, sites=sites)


def cli_sites(sites: int | None, partition: str) -> int:
    """``--sites`` as given, or its default: one per value (0) for ``by-column``, else :data:`DEFAULT_SITES`."""
    if sites is not None:
        return sites
    return 0 if partition.strip().startswith("by-column") else DEFAULT_SITES


def resolve_data(cfg: Any) -> Any:
    """Check ``cfg``'s data (a ``SimulationConfig``) before anything starts; under ``by-column``, set ``sites``.

    A ``--data`` file is read and checked here (once: :func:`load_source`
    caches it for the split), so a bad file fails before the registry, keys
    or engine are touched. Under ``by-column:COL`` the number of sites is the
    number of distinct values of ``COL``; ``sites`` 0 takes it, any other
    number must equal it.

    Raises
    ------
    ConfigurationError
        Contradictory flags, ``sites`` contradicting the data, or a data file or column that cannot be read.
    """
    options = DataOptions.of(cfg)
    options.check()
    partitioner = create_partitioner(options.partition, alpha=options.alpha)
    if not options.data and not isinstance(partitioner, ByColumn):
        return cfg
    from simulations.data.sources import load_source

    source = load_source(options)
    if not isinstance(partitioner, ByColumn):
        return cfg
    found = partitioner.sites_for(source.column(partitioner.column or ""))
    if options.sites not in (0, found):
        raise ConfigurationError(
            f"--partition {partitioner.spec} gives {found} sites (one per value of '{partitioner.column}'), but "
            f"--sites is {options.sites}: leave --sites out or pass --sites {found}")
    return replace(cfg, sites=found) if options.sites != found else cfg
