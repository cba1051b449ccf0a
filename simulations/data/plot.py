"""A partition as a figure: each site's records stacked by label, sites sorted by size.

Two panels share the sites' order (largest first): record counts on top,
label shares (100 %) below, so both quantity skew and label skew show. Above
:data:`MAX_BARS` sites, consecutive sites in that order are pooled into
:data:`MAX_BARS` bars (mean counts of the bin), and the title says so: a
thousand one-pixel bars would show nothing. Rendered with matplotlib's Agg
backend (no display needed); the format follows the file's suffix
(``.svg``, ``.png``, ``.pdf``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simulations.data.report import PartitionReport

MAX_BARS = 100
MAX_LEGEND = 12


def _bins(report: PartitionReport) -> tuple[np.ndarray, str]:
    """The bars' label counts (bars × classes) in size order, and the x-axis caption."""
    order = np.argsort(-report.sizes, kind="stable")
    counts = report.counts[order].astype(float)
    sites = len(order)
    if sites <= MAX_BARS:
        return counts, f"{sites} sites, largest first"
    edges = np.linspace(0, sites, MAX_BARS + 1).astype(int)
    pooled = np.stack([counts[a:b].mean(axis=0) for a, b in zip(edges[:-1], edges[1:], strict=True)])
    return pooled, f"{sites} sites, largest first, in {MAX_BARS} bins of ~{sites / MAX_BARS:.0f} (mean per bin)"


def plot_partition(report: PartitionReport, path: Path) -> Path:
    """Draw ``report`` to ``path`` and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars, caption = _bins(report)
    shares = bars / np.maximum(bars.sum(axis=1, keepdims=True), 1e-12)
    x = np.arange(len(bars))
    colours = plt.get_cmap("tab20" if len(report.label_names) > 10 else "tab10")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, constrained_layout=True)
    low_counts, low_shares = np.zeros(len(bars)), np.zeros(len(bars))
    for k, name in enumerate(report.label_names):
        colour = colours(k % colours.N)
        top.bar(x, bars[:, k], bottom=low_counts, width=0.9, color=colour,
                label=name if k < MAX_LEGEND else None)
        bottom.bar(x, shares[:, k], bottom=low_shares, width=0.9, color=colour)
        low_counts += bars[:, k]
        low_shares += shares[:, k]
    summary = report.summary()
    top.set_title(f"{report.source} · {report.spec} · {summary['records']} training records · "
                  f"label skew {summary['label_skew']:.2f}")
    top.set_ylabel("records")
    bottom.set_ylabel("label share")
    bottom.set_ylim(0, 1)
    bottom.set_xlabel(caption)
    if len(bars) <= 30:
        names = ([report.groups[i] for i in np.argsort(-report.sizes, kind="stable")] if report.groups
                 else [report.site_name(i) for i in np.argsort(-report.sizes, kind="stable")])
        bottom.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    top.legend(title="label", fontsize=7, title_fontsize=8, loc="upper right",
               ncols=max(1, min(len(report.label_names), MAX_LEGEND) // 6 + 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
