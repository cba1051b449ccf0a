"""Trials grouped by their settings, seeds set aside: what a report averages over.

A result is a mean ± sample standard deviation over the seeds of one
setting, never one seed's last round: a federation's accuracy varies with
the split, the initial weights and the DP noise, and a single seed can sit
anywhere in that spread.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (0 for one value) and count of some values."""

    mean: float
    sd: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.sd:.3f} (n={self.n})"


def spread(values: Iterable[float | None]) -> Spread | None:
    """The spread of the finite values (``None`` when there are none)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return None
    return Spread(statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0, len(finite))


def settings_of(record: Record) -> dict[str, Any]:
    """A trial's full settings, hyphenated: its config's defaults under the grid's own settings."""
    config = {k.replace("_", "-"): v for k, v in record.get("config", {}).items()}
    return {**config, **record.get("settings", {})}


def varied(records: Sequence[Record], exclude: Iterable[str] = ()) -> list[str]:
    """The settings whose values differ between ``records`` (sorted), leaving out ``exclude``."""
    skip = set(exclude)
    all_settings = [settings_of(r) for r in records]
    keys = sorted({k for s in all_settings for k in s} - skip)
    return [k for k in keys if len({json.dumps(s.get(k), default=str) for s in all_settings}) > 1]


def common(records: Sequence[Record], exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The settings every record shares (the rest of a figure's exact settings)."""
    skip = set(exclude) | set(varied(records))
    first = settings_of(records[0]) if records else {}
    return {k: v for k, v in sorted(first.items()) if k not in skip}


def group_by(records: Sequence[Record], keys: Sequence[str]) -> dict[tuple[Any, ...], list[Record]]:
    """Records grouped by their values of ``keys``, in first-seen order."""
    groups: dict[tuple[Any, ...], list[Record]] = {}
    for record in records:
        settings = settings_of(record)
        groups.setdefault(tuple(settings.get(k) for k in keys), []).append(record)
    return groups


def sorted_groups(records: Sequence[Record], keys: Sequence[str]) -> list[tuple[tuple[Any, ...], list[Record]]]:
    """:func:`group_by`, ordered by the settings' values (numbers as numbers, then text), for tables and legends."""
    def order(values: tuple[Any, ...]) -> tuple[tuple[int, float, str], ...]:
        return tuple((0, float(v), "") if isinstance(v, (int, float)) else (1, 0.0, str(v)) for v in values)
    return sorted(group_by(records, keys).items(), key=lambda item: order(item[0]))


def label(keys: Sequence[str], values: Sequence[Any]) -> str:
    """``dp-epsilon=3.0, aggregation=median`` (or ``all trials`` when nothing varies)."""
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True)) or "all trials"


def seeds(records: Iterable[Record]) -> list[Any]:
    """The distinct seeds of ``records``, sorted."""
    return sorted({settings_of(r).get("seed") for r in records}, key=str)


def metric(name: str) -> Callable[[Record], float | None]:
    """A getter of one flat metric of a record."""
    def get(record: Record) -> float | None:
        value = record.get("metrics", {}).get(name)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return get
