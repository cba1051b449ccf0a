"""The report's figures, each drawn from trial records as mean ± sd over seeds (matplotlib, Agg).

Each function returns a :class:`Drawn` figure with the records it drew (so
the caption can list their exact settings and seeds) or a :class:`Skipped`
note saying what the data lacks: a grid without attacks has no attack
figure, and the report says so instead of leaving a gap.

Notes
-----
The privacy–utility curve puts the *target* ε of each DP kind on the x
axis (record-level DP-SGD, Abadi et al. 2016; site-level DP, McMahan et
al. 2018, "Learning Differentially Private Recurrent Language Models"),
the settings a reader reruns; the ε actually spent is in the tables. The
ε̂-vs-ε figure compares the claimed ε with the audit's empirical lower
bound (Steinke, Nasr & Jagielski 2023, "Privacy Auditing with One (1)
Training Run"): a point above the diagonal would be a broken guarantee.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from simulations.experiments.aggregate import (
    Record,
    group_by,
    label,
    metric,
    settings_of,
    sorted_groups,
    spread,
    varied,
)

EPSILON_KEYS = ("dp-epsilon", "site-epsilon")
LOWER_BOUND_KEYS = ("epsilon_lower_bound", "epsilon_hat", "eps_hat")
DEFENCE_KEYS = ("aggregation", "strategy", "secure-agg")


@dataclass(frozen=True)
class Drawn:
    """A figure, the records it draws, and a note for its caption (trials it could not draw, and why)."""

    name: str
    title: str
    figure: Any
    records: Sequence[Record]
    note: str = ""


@dataclass(frozen=True)
class Skipped:
    """A figure the data cannot draw, and why."""

    name: str
    title: str
    reason: str


Result = Drawn | Skipped


def _axes(ncols: int = 1) -> tuple[Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "fedguard", "figure.dpi": 100})
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4 * ncols, 4.2), layout="constrained")
    return figure, [figure.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _errorbar(ax: Any, points: Sequence[tuple[float, Any]], text: str) -> None:
    drawn = sorted((x, s) for x, s in points if s is not None)
    if drawn:
        ax.errorbar([x for x, _ in drawn], [s.mean for _, s in drawn], yerr=[s.sd for _, s in drawn],
                    marker="o", capsize=3, label=text)


def accuracy_per_round(records: Sequence[Record]) -> Result:
    """Test accuracy after each round, one line per setting (mean ± sd band over seeds)."""
    title = "Accuracy per round"
    with_history = [r for r in records if r.get("history")]
    if not with_history:
        return Skipped("accuracy-per-round", title, "no finished trial recorded a per-round history")
    keys = varied(with_history, exclude=["seed"])
    figure, (ax,) = _axes()
    for values, group in sorted_groups(with_history, keys):
        rounds = sorted({e["round"] for r in group for e in r["history"]})
        spreads = [spread(e["accuracy"] for r in group for e in r["history"] if e["round"] == n) for n in rounds]
        xs = [n for n, s in zip(rounds, spreads, strict=True) if s is not None]
        kept = [s for s in spreads if s is not None]
        line = ax.plot(xs, [s.mean for s in kept], marker="o", label=label(keys, values))
        ax.fill_between(xs, [s.mean - s.sd for s in kept], [s.mean + s.sd for s in kept],
                        alpha=0.2, color=line[0].get_color())
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="round", ylabel="test accuracy (mean ± sd over seeds)", title=title)
    ax.legend(fontsize="small")
    return Drawn("accuracy-per-round", title, figure, with_history)


def dp_kind(record: Record) -> str:
    """``record``, ``site``, ``record + site`` or ``none``: which DP a trial trained with."""
    settings = settings_of(record)
    record_dp, site_dp = float(settings.get("dp-epsilon") or 0) > 0, float(settings.get("site-epsilon") or 0) > 0
    return {(True, False): "record", (False, True): "site", (True, True): "record + site"}.get(
        (record_dp, site_dp), "none")


def privacy_utility(records: Sequence[Record]) -> Result:
    """Final accuracy against target ε, one curve per DP kind (and other varied setting); no-DP as a band."""
    title = "Privacy–utility: final accuracy vs target ε"
    if not any(dp_kind(r) != "none" for r in records):
        return Skipped("privacy-utility", title, "no finished trial trained with DP (every ε is 0)")
    others = varied(records, exclude=["seed", *EPSILON_KEYS])
    final = metric("final_accuracy")
    figure, (ax,) = _axes()
    colours: dict[tuple[Any, ...], Any] = {}  # a no-DP line takes the colour of its setting's DP curve
    for kind, x_key in (("record", "dp-epsilon"), ("site", "site-epsilon"), ("record + site", "site-epsilon")):
        subset = [r for r in records if dp_kind(r) == kind]
        for values, group in sorted_groups(subset, others):
            points = [(float(x[0]), spread(final(r) for r in g)) for x, g in group_by(group, [x_key]).items()]
            _errorbar(ax, points, f"{kind}-level DP" + (f" ({label(others, values)})" if others else ""))
            if ax.lines:
                colours.setdefault(values, ax.lines[-1].get_color())
    for values, group in sorted_groups([r for r in records if dp_kind(r) == "none"], others):
        s = spread(final(r) for r in group)
        if s is not None:
            colour = colours.get(values, "grey") if others else "grey"
            ax.axhline(s.mean, linestyle="--", color=colour,
                       label="no DP" + (f" ({label(others, values)})" if others else ""))
            ax.axhspan(s.mean - s.sd, s.mean + s.sd, color=colour, alpha=0.12)
    ax.set(xlabel="target ε (per site, whole run)", ylabel="final test accuracy (mean ± sd over seeds)", title=title)
    ax.legend(fontsize="small")
    return Drawn("privacy-utility", title, figure, records)


SUCCESS_HINTS = ("success", "flipped_class_error")
"""An attack's own measure, by metric name: a backdoor's success rate, label flipping's flipped-class error."""


def _success_metric(records: Sequence[Record]) -> str | None:
    """The attack's own measure among ``records``' metrics (``None`` for untargeted attacks: accuracy is it)."""
    for hint in SUCCESS_HINTS:
        names = sorted({str(k) for r in records for k in r.get("metrics", {})
                        if hint in k and metric(k)(r) is not None})
        if names:
            return names[0]
    return None


def _defence_label(keys: Sequence[str], values: Sequence[Any]) -> str:
    """``secagg+ · fedavg``: the defence's settings' values, secure aggregation first."""
    ordered = sorted(zip(keys, values, strict=True), key=lambda kv: kv[0] != "secure-agg")
    return " · ".join(str(v) for _, v in ordered) or "fedavg"


def attacks(records: Sequence[Record]) -> Result:
    """Per attack, main-task accuracy and the attack's own measure against the attacker fraction, a line per defence.

    The fraction 0 of each line is the same defence with every site honest
    (trials with ``attack = none``), so a line starts from what the defence
    costs without attackers. Settings a defence cannot run under (robust
    rules under secure aggregation) are named in the caption with the
    reason, not dropped.
    """
    title = "Attacks: main-task accuracy and attack success per defence and attacker fraction"
    attacked = [r for r in records if str(settings_of(r).get("attack", "none")) != "none"]
    if not attacked:
        return Skipped("attacks", title, "no trial ran an attack (no 'attack' setting other than 'none')")
    honest = [r for r in records if r["status"] == "ok" and str(settings_of(r).get("attack", "none")) == "none"]
    ok = [r for r in attacked if r["status"] == "ok"]
    defences = [k for k in DEFENCE_KEYS if k in varied([*attacked, *honest])] or ["aggregation"]
    names = sorted({str(settings_of(r).get("attack")) for r in attacked})
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "fedguard", "figure.dpi": 100})
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.4 * len(names) + 2.6, 6.4), layout="constrained")
    grid = figure.subplots(2, len(names), squeeze=False, sharex=True)
    colours: dict[str, Any] = {}
    for column, name in enumerate(names):
        runs = [r for r in ok if str(settings_of(r).get("attack")) == name]
        measure = _success_metric(runs)
        top, bottom = grid[0][column], grid[1][column]
        for values, group in sorted_groups(runs, defences):
            text = _defence_label(defences, values)
            baseline = [r for r in honest if all(settings_of(r).get(k) == v for k, v in zip(defences, values,
                                                                                            strict=True))]
            for ax, get in ((top, metric("final_accuracy")), (bottom, metric(measure) if measure else None)):
                if get is None:
                    continue
                by_fraction = group_by(group, ["attackers"]).items()
                points = [(float(x[0] or 0), spread(get(r) for r in g)) for x, g in by_fraction]
                if ax is top and baseline:
                    points.append((0.0, spread(get(r) for r in baseline)))
                drawn = sorted((x, sp) for x, sp in points if sp is not None)
                if drawn:
                    line = ax.errorbar([x for x, _ in drawn], [sp.mean for _, sp in drawn],
                                       yerr=[sp.sd for _, sp in drawn], marker="o", capsize=3,
                                       color=colours.get(text), label=text if text not in colours else None)
                    colours.setdefault(text, line.lines[0].get_color())
        top.set_title(name)
        top.set(ylabel="main-task accuracy" if column == 0 else "")
        if measure is None:
            bottom.text(0.5, 0.5, "untargeted attack:\nmain-task accuracy\nis its measure", ha="center",
                        va="center", transform=bottom.transAxes, fontsize="small")
            bottom.set_yticks([])
        else:
            bottom.set(ylabel=measure.removeprefix("attack_").replace("_", " "))
        bottom.set(xlabel="attacker fraction")
    inapplicable = [r for r in attacked if r["status"] == "not-applicable"]
    notes = sorted({f"{_defence_label(defences, [settings_of(r).get(k) for k in defences])}: not applicable — "
                    f"{r['error']}" for r in inapplicable})
    figure.legend(loc="outside right center", fontsize="small", title="defence")
    figure.suptitle(title + (" (mean ± sd over seeds)" if len({settings_of(r).get("seed") for r in ok}) > 1 else ""))
    return Drawn("attacks", title, figure, attacked, note="; ".join(notes))


def _roc(audit: Any) -> tuple[list[float], list[float]] | None:
    """ROC points of an audit section: ``roc``/``mia_roc`` as ``{fpr, tpr}`` or a list of ``[fpr, tpr]``."""
    if not isinstance(audit, dict):
        return None
    roc = audit.get("roc", audit.get("mia_roc"))
    if isinstance(roc, dict) and isinstance(roc.get("fpr"), list) and isinstance(roc.get("tpr"), list):
        return [float(v) for v in roc["fpr"]], [float(v) for v in roc["tpr"]]
    if isinstance(roc, list) and roc and all(isinstance(p, list) and len(p) == 2 for p in roc):
        return [float(p[0]) for p in roc], [float(p[1]) for p in roc]
    return None


def mia_roc(records: Sequence[Record]) -> Result:
    """Membership-inference ROC curves, one per trial, coloured by setting."""
    title = "Membership inference: ROC curves"
    audited = [r for r in records if _roc(r.get("privacy_audit")) is not None]
    if not audited:
        return Skipped("mia-roc", title, "no trial recorded membership-inference ROC points (privacy_audit.roc)")
    keys = varied(audited, exclude=["seed"])
    figure, (ax,) = _axes()
    for values, group in sorted_groups(audited, keys):
        color = None
        for r in group:
            fpr, tpr = _roc(r["privacy_audit"]) or ([], [])
            line = ax.plot(fpr, tpr, color=color, alpha=0.8,
                           label=label(keys, values) if color is None else None)
            color = line[0].get_color()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title + " (one line per seed)")
    ax.legend(fontsize="small")
    return Drawn("mia-roc", title, figure, audited)


def _lower_bound(record: Record) -> float | None:
    audit = record.get("privacy_audit") or {}
    for key in LOWER_BOUND_KEYS:
        if isinstance(audit.get(key), (int, float)) and not isinstance(audit.get(key), bool):
            return float(audit[key])
    return None


def _claimed(record: Record) -> float:
    """The ε the audited run claimed; 0 for a run without record-level DP (it claims nothing)."""
    audit = record.get("privacy_audit") or {}
    value = audit.get("epsilon")
    return float(value) if isinstance(value, (int, float)) else float(settings_of(record).get("dp-epsilon") or 0)


def epsilon_audit(records: Sequence[Record]) -> Result:
    """The audit's empirical ε̂ (a lower bound) against the claimed ε, with the diagonal ε̂ = ε."""
    title = "Privacy audit: empirical ε̂ vs claimed ε"
    audited = [r for r in records if _lower_bound(r) is not None]
    if not audited:
        return Skipped("epsilon-audit", title, "no trial recorded an audit ε̂ (privacy_audit.epsilon_lower_bound)")
    keys = varied(audited, exclude=["seed", *EPSILON_KEYS])
    figure, (ax,) = _axes()
    claiming = [r for r in audited if _claimed(r) > 0]
    for values, group in sorted_groups(claiming, keys):
        by_claim: dict[float, list[Record]] = {}
        for r in group:
            by_claim.setdefault(_claimed(r), []).append(r)
        _errorbar(ax, sorted(((x, spread(_lower_bound(r) for r in g)) for x, g in by_claim.items()),
                             key=lambda point: point[0]), label(keys, values))
    # Runs without DP claim nothing (ε = ∞): their ε̂ is drawn as a band, not as a point at ε = 0, where it
    # would sit above the diagonal as if it refuted a claim.
    unclaimed = spread(_lower_bound(r) for r in audited if _claimed(r) <= 0)
    if unclaimed is not None:
        ax.axhspan(unclaimed.mean - unclaimed.sd, unclaimed.mean + unclaimed.sd, color="tab:red", alpha=0.12)
        ax.axhline(unclaimed.mean, color="tab:red", linestyle="--",
                   label=f"no DP (no claim): ε̂ = {unclaimed.mean:.2f} ± {unclaimed.sd:.2f}")
    top = max([_claimed(r) for r in audited] + [_lower_bound(r) or 0 for r in audited] + [1.0])
    ax.plot([0, top], [0, top], linestyle=":", color="grey", label="ε̂ = ε")
    ax.set(xlabel="claimed ε", ylabel="empirical ε̂ (mean ± sd over seeds)", title=title)
    ax.legend(fontsize="small")
    return Drawn("epsilon-audit", title, figure, audited)


FIGURES: tuple[Callable[[Sequence[Record]], Result], ...] = (
    accuracy_per_round, privacy_utility, attacks, mia_roc, epsilon_audit)
"""Every figure of a report, in order; ``attacks`` also receives not-applicable trials."""
