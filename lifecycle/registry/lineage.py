"""Checks that the registry still says what the signed ML-BOM says.

The registry's rows (ε per site, sites, data manifests, metrics, watermark,
run) are what ``fedguard models show``, governance gates and the privacy
reports read; the ML-BOM signed with the weights is what the publisher
attested. A registry edited afterwards (``UPDATE site_participation SET
epsilon = 0.01``) would make a model look more private or more accurate than
it is while its signature still verifies. :func:`check_lineage` compares the
two field by field and raises naming the first field that differs (DESIGN §5:
verification raises, it never returns ``False``; §6: what the registry says
about a model must agree with the signed ML-BOM).

The BOM must have been verified against its signature first: it is only the
reference because it is signed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from lifecycle.bom import read_lineage, signed_sites
from lifecycle.errors import VerificationError
from lifecycle.registry.store import SiteRecord, VersionRecord


class LineageMismatch(VerificationError):
    """The registry disagrees with the signed ML-BOM; ``field`` names what differs (exit 5)."""

    def __init__(self, record: VersionRecord, field: str, registry: Any, signed: Any) -> None:
        super().__init__(
            f"{record.ref}: the registry's {field} is {registry!r} but the signed ML-BOM says {signed!r}; "
            "the registry was changed after the model was published: restore the registry from a backup "
            "and find out who changed it (see the audit trail)"
        )
        self.field = field


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=1e-12) or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _compare_json(record: VersionRecord, field: str, registry: Mapping[str, Any], signed: Mapping[str, Any]) -> None:
    """Compare two JSON objects key by key (as JSON text, so NaN equals NaN and 1 == 1.0 stays exact)."""
    for key in sorted(set(registry) | set(signed), key=str):
        ours, theirs = registry.get(key), signed.get(key)
        if key not in registry or key not in signed or _canonical(ours) != _canonical(theirs):
            raise LineageMismatch(record, f"{field}.{key}", ours, theirs)


def _signed_rows(bom: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The site rows the BOM attests: its data components, or the training section of an older BOM."""
    rows = signed_sites(bom)
    if rows is not None:
        return rows
    legacy: dict[str, dict[str, Any]] = {}
    for site in read_lineage(bom).get("training", {}).get("sites", []):
        row = {"num_examples": site.get("num_examples"), "data_manifest": site.get("data_manifest")}
        dp = site.get("dp", {})
        row.update({k: dp[k] for k in ("epsilon", "delta") if k in dp})
        legacy[str(site["site"])] = row
    return legacy


def _compare_sites(record: VersionRecord, signed: dict[str, dict[str, Any]]) -> None:
    rows: dict[str, SiteRecord] = {s.site: s for s in record.sites}
    if set(rows) != set(signed):
        raise LineageMismatch(record, "site_participation.site (the sites)", sorted(rows), sorted(signed))
    for name in sorted(rows):
        for column, value in signed[name].items():
            ours = getattr(rows[name], column)
            if not _same(ours, value):
                raise LineageMismatch(record, f"site_participation.{column} of site '{name}'", ours, value)


def check_lineage(record: VersionRecord, bom: Mapping[str, Any]) -> dict[str, Any]:
    """Raise :class:`LineageMismatch` unless ``record`` agrees with the signed ``bom``.

    Returns a summary of what was compared (for ``models verify --json``).
    """
    lineage = read_lineage(bom)
    if "run_id" in lineage and record.run_id != lineage["run_id"]:
        raise LineageMismatch(record, "model_version.run_id", record.run_id, lineage["run_id"])
    if "rounds" in lineage and record.rounds != lineage["rounds"]:
        raise LineageMismatch(record, "training_run.rounds", record.rounds, lineage["rounds"])
    _compare_sites(record, _signed_rows(bom))
    _compare_json(record, "model_version.metrics", record.metrics, lineage.get("metrics", {}))
    _compare_json(record, "model_version.watermark", record.watermark, lineage.get("watermark", {}))
    return {"verified": True, "sites": len(record.sites), "metrics": sorted(record.metrics)}
