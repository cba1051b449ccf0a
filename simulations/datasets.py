"""Datasets that ship with scikit-learn: nothing is downloaded at run time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import datasets as sk

from lifecycle.errors import ConfigurationError

_LOADERS: dict[str, Any] = {
    "breast-cancer": sk.load_breast_cancer,
    "digits": sk.load_digits,
    "wine": sk.load_wine,
}


@dataclass(frozen=True)
class Dataset:
    """Features, integer labels, and their names."""

    name: str
    features: np.ndarray
    labels: np.ndarray
    feature_names: tuple[str, ...]
    label_names: tuple[str, ...]


def available_datasets() -> tuple[str, ...]:
    """Names of the bundled datasets that :func:`load_dataset` accepts."""
    return tuple(_LOADERS)


def load_dataset(name: str) -> Dataset:
    """Load a bundled dataset by name (``breast-cancer``, ``digits``, ``wine``)."""
    if name not in _LOADERS:
        raise ConfigurationError(f"unknown dataset '{name}'; choose one of {', '.join(_LOADERS)}")
    bunch = _LOADERS[name]()
    features = np.asarray(bunch.data, dtype=np.float32)
    names = getattr(bunch, "feature_names", None)
    feature_names = tuple(str(n) for n in names) if names is not None else tuple(
        f"x{i}" for i in range(features.shape[1])
    )
    return Dataset(
        name, features, np.asarray(bunch.target, dtype=np.int64), feature_names,
        tuple(str(t) for t in bunch.target_names),
    )
