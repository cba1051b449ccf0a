"""The results of an experiment: one JSON record per trial, and the flat table built from them.

``<out>/trials/<id>.json`` is the source of truth (a trial with a record is
done, whatever its status, and is not run again); ``<out>/results.parquet``
is rewritten from the records each time one is added, one row per trial:
the trial's full settings (``SimulationConfig`` field names), its final
accuracy, the ε spent per DP kind, attack and audit metrics, seconds and
status. A record keeps what the flat row cannot: the per-round history,
and the audit and attack sections whole (ROC points).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

STATUSES = ("ok", "failed", "not-applicable")
ATTACK_HINTS = ("attack", "backdoor")
AUDIT_KEYS = ("privacy_audit",)


def trials_dir(out: Path) -> Path:
    """Where the per-trial records of the results folder ``out`` live."""
    return out / "trials"


def record_path(out: Path, trial: str) -> Path:
    """The record of trial ``trial`` in results folder ``out``."""
    return trials_dir(out) / f"{trial}.json"


def make_record(trial: str, settings: Mapping[str, Any], status: str, *, config: Mapping[str, Any] | None = None,
                outcome: Mapping[str, Any] | None = None, error: str = "", seconds: float = 0.0) -> dict[str, Any]:
    """A trial's record: what it ran (settings and full config), how it ended, and what it measured."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r}: one of {STATUSES}")
    outcome = outcome or {}
    return {
        "id": trial, "status": status, "error": error, "settings": dict(settings),
        "config": dict(config or outcome.get("config") or {}),
        "metrics": summarize(outcome) if outcome else {},
        "history": [_round(entry) for entry in outcome.get("history", [])],
        "privacy_audit": _audit_section(outcome),
        "attack": {key: value for key, value in outcome.items()
                   if isinstance(value, Mapping) and any(h in key for h in ATTACK_HINTS)},
        "seconds": seconds,
    }


def summarize(outcome: Mapping[str, Any]) -> dict[str, Any]:
    """The flat metrics of one simulation outcome: final accuracy, ε spent per kind, attack and audit numbers."""
    metrics: dict[str, Any] = {
        "final_accuracy": _number(outcome.get("accuracy")),
        "baseline_accuracy": _number(outcome.get("baseline_accuracy")),
        "record_epsilon_spent": _worst(outcome.get("epsilon")),
        "site_epsilon_spent": _worst(outcome.get("site_epsilon")),
        "rounds_aggregated": float(len(outcome.get("history", []))),
        "simulation_seconds": _number(outcome.get("seconds")),
    }
    for key, value in outcome.items():
        if not any(h in key for h in ATTACK_HINTS):
            continue
        if isinstance(value, Mapping):
            prefix = "attack_" if key == "attack" else f"{key}_"
            metrics.update({prefix + k: _scalar(v) for k, v in value.items() if _is_scalar(v)})
        elif _is_scalar(value):
            metrics[key] = _scalar(value)
    audit = _audit_section(outcome) or {}
    metrics.update({f"audit_{k}": _scalar(v) for k, v in audit.items() if _is_scalar(v)})
    return metrics


def write_record(out: Path, record: Mapping[str, Any]) -> Path:
    """Write a trial's record atomically (a half-written record would count as done)."""
    path = record_path(out, str(record["id"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def read_records(out: Path) -> list[dict[str, Any]]:
    """Every trial record in results folder ``out``, by id."""
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(trials_dir(out).glob("*.json"))]


def rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per record: id, status, error, every setting, every metric, seconds."""
    out = []
    for record in records:
        settings = {k.replace("-", "_"): v for k, v in record.get("settings", {}).items()}
        out.append({"id": record["id"], "status": record["status"], "error": record.get("error", ""),
                    **record.get("config", {}), **settings, **record.get("metrics", {}),
                    "seconds": float(record.get("seconds", 0.0))})
    return out


def write_table(out: Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Rewrite ``<out>/results.parquet`` from ``records`` (atomically)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table_rows = rows(records)
    columns = list(dict.fromkeys(k for row in table_rows for k in row))
    table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in table_rows])
    path = out / "results.parquet"
    partial = out / "results.parquet.partial"
    pq.write_table(table, partial)
    os.replace(partial, path)
    return path


def _audit_section(outcome: Mapping[str, Any]) -> dict[str, Any] | None:
    for where in (outcome, outcome.get("metrics")):
        if isinstance(where, Mapping):
            for key in AUDIT_KEYS:
                if isinstance(where.get(key), Mapping):
                    return dict(where[key])
    return None


def _round(entry: Mapping[str, Any]) -> dict[str, Any]:
    values = {k: entry.get(k) for k in ("round", "accuracy", "loss", "epsilon_max", "site_epsilon")}
    return {k: v if v is None or _is_scalar(v) else None for k, v in values.items()}  # NaN loss → null


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float)) and (isinstance(value, bool) or math.isfinite(value))


def _scalar(value: Any) -> Any:
    return value if isinstance(value, bool) else float(value)


def _number(value: Any) -> float | None:
    return float(value) if _is_scalar(value) and not isinstance(value, bool) else None


def _worst(per_site: Any) -> float | None:
    """The largest ε any site spent (``None`` when that DP kind was off)."""
    if not isinstance(per_site, Mapping):
        return _number(per_site)
    values = [float(v) for v in per_site.values() if _number(v) is not None]
    return max(values) if values else None
