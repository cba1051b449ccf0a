"""A results folder as a Markdown table: mean ± sd over seeds per setting, for a paper's draft or a README.

The HTML report (:mod:`.report`) is for reading; this is for pasting. Each
row is one setting (the grid's varied keys, seeds left out), each cell the
mean ± sample sd over that setting's seeds of the trials that ran, so a
table never shows one seed's last round (the rule of
:mod:`simulations.experiments.aggregate`); a setting run with one seed shows
its value alone, with the seed in the seeds column. Columns appear only when some
trial has the metric: attack success under an attack, the audit's AUC and
ε̂ under canaries. Settings recorded as not applicable (a robust rule under
secure aggregation) or failed keep their row, with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

from simulations.experiments.aggregate import Record, metric, seeds, settings_of, sorted_groups, spread, varied

COLUMNS = (
    ("final_accuracy", "accuracy"),
    ("record_epsilon_spent", "record ε spent"),
    ("site_epsilon_spent", "site ε spent"),
)
"""The metrics every table may show, in order, with their headings."""
MEASURES = ("success", "error", "auc", "tpr", "lower_bound")
"""Attack and audit metrics (``attack_*``, ``audit_*``) whose names hold one of these are shown too."""


TITLES = {
    "audit_epsilon_lower_bound": "audit ε̂ (95 %)",
    "audit_mia_auc": "MIA AUC",
    "audit_mia_tpr_at_0_1pct_fpr": "TPR @ 0.1 % FPR",
    "audit_mia_tpr_at_1pct_fpr": "TPR @ 1 % FPR",
}
"""Headings of the measures fedguard records (others are shown by their names)."""


def _columns(records: Sequence[Record]) -> list[tuple[str, str]]:
    """The columns some trial has a value for: :data:`COLUMNS`, then attack and audit measures by name."""
    names = sorted({k for r in records for k in r.get("metrics", {})
                    if k.startswith(("attack_", "audit_")) and any(m in k for m in MEASURES)})
    columns = [*COLUMNS, *((n, TITLES.get(n, n.replace("_", " "))) for n in names)]
    return [(n, t) for n, t in columns if any(metric(n)(r) is not None for r in records)]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def summary_markdown(records: Sequence[Record], *, exclude: Sequence[str] = ("seed", "ray-address")) -> str:
    """One Markdown table: a row per setting, mean ± sd over seeds of each metric some trial has."""
    keys = varied(records, exclude=exclude)
    ok = [r for r in records if r["status"] == "ok"]
    shown = _columns(ok)
    head = [*keys, "seeds", *(title for _, title in shown), "not run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for values, group in sorted_groups(records, keys):
        ran = [r for r in group if r["status"] == "ok"]
        cells = ["" if v is None else str(v) for v in values] + [",".join(str(s) for s in seeds(group))]
        for name, _ in shown:
            s = spread(metric(name)(r) for r in ran)
            cells.append("–" if s is None else f"{s.mean:.3f}" if s.n == 1 else f"{s.mean:.3f} ± {s.sd:.3f}")
        reasons = sorted({f"{r['status']}: {r.get('error', '')}".strip() for r in group if r["status"] != "ok"})
        cells.append("; ".join(reasons))
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def settings_line(records: Sequence[Record], *, exclude: Sequence[str] = ("seed", "ray-address")) -> str:
    """The settings every trial shares, for the table's caption."""
    keys = set(varied(records)) | set(exclude)
    first = settings_of(records[0]) if records else {}
    return ", ".join(f"{k}={v}" for k, v in sorted(first.items()) if k not in keys and v not in ("", None))
