"""Aggregation rules behind a small registry (``register_aggregation`` / ``create_aggregation``).

Robust rules (median, trimmed mean, Krum, Multi-Krum, Bulyan) are Flower's
own; they need the individual updates, so they are only available without
secure aggregation (``CoordinatorConfig.validate`` refuses them with SecAgg+
or CKKS). Krum and Multi-Krum assume the largest number of malicious sites
they tolerate among ``n``, ``f = ⌊(n − 3)/2⌋`` (``n ≥ 2f + 3``; Multi-Krum
averages the ``m = n − f`` best-scored updates), Bulyan ``f = ⌊(n − 3)/4⌋``
(``n ≥ 4f + 3``; with fewer than 7 sites f = 0 and it degrades to the mean
of the updates nearest the coordinate-wise median). A
research extension registers its own rule by name, as Opacus registers
accountants (DESIGN §7 item 4).
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Strategy

from lifecycle.errors import ConfigurationError

AggregationFactory = Callable[..., Strategy]
"""Builds a Flower strategy from ``fraction_train``, ``fraction_evaluate``, ``min_train_nodes``,
``min_available_nodes``."""

AGGREGATIONS: dict[str, Callable[..., Strategy]] = {
    "fedavg": FedAvg,
    "median": FedMedian,
    "trimmed-mean": lambda **kw: FedTrimmedAvg(beta=0.2, **kw),
    "krum": lambda **kw: Krum(num_malicious_nodes=max(0, (kw["min_train_nodes"] - 3) // 2), **kw),
    "multi-krum": lambda **kw: MultiKrum(num_malicious_nodes=(f := max(0, (kw["min_train_nodes"] - 3) // 2)),
                                         num_nodes_to_select=kw["min_train_nodes"] - f, **kw),
    "bulyan": lambda **kw: Bulyan(num_malicious_nodes=max(0, (kw["min_train_nodes"] - 3) // 4), **kw),
}


def create_aggregation(name: str, *, sites: int) -> Strategy:
    """Flower's strategy for ``name``, sampling all ``sites`` every round, no federated evaluation."""
    if name not in AGGREGATIONS:
        raise ConfigurationError(f"unknown aggregation '{name}'; choose one of {', '.join(AGGREGATIONS)}")
    if name in ("krum", "multi-krum", "bulyan") and sites < 3:
        raise ConfigurationError(f"{name} needs at least 3 sites")
    return AGGREGATIONS[name](
        fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=sites, min_available_nodes=sites,
    )


def register_aggregation(name: str, factory: AggregationFactory, *, replace: bool = False) -> None:
    """Make ``name`` available to ``aggregation = "<name>"`` (a run config key).

    Raises
    ------
    ConfigurationError
        ``name`` is taken and ``replace`` is false.
    """
    if name in AGGREGATIONS and not replace:
        raise ConfigurationError(f"aggregation '{name}' is already registered; pass replace=True to override it")
    AGGREGATIONS[name] = factory
