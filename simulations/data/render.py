"""A partition report as a compact Rich table: the first sites as rows, then a summary line.

A thousand sites would scroll a terminal away, so above :data:`MAX_ROWS`
sites the table shows the first :data:`HEAD` and says how many it left out
(``partition.json`` has them all). Above :data:`MAX_LABEL_COLUMNS` classes
the label counts go into one column, the site's most common labels first.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from simulations.data.report import PartitionReport

MAX_ROWS = 20
HEAD = 10
MAX_LABEL_COLUMNS = 6


def summary_line(report: PartitionReport) -> str:
    """One line: sites, records, size spread, label skew."""
    s = report.summary()
    return (f"{s['sites']} sites · {s['records']} training records (+{s['test_records']} held out) · size "
            f"min {s['size_min']} / median {s['size_median']:g} / max {s['size_max']} · label skew "
            f"{s['label_skew']:.2f}")


def partition_table(report: PartitionReport) -> Group:
    """The report as a table followed by :func:`summary_line`."""
    table = Table(title=f"partition {report.spec} of {report.source}", title_justify="left")
    table.add_column("site", no_wrap=True)
    if report.groups:
        table.add_column("group", overflow="fold")
    table.add_column("records", justify="right")
    wide = len(report.label_names) > MAX_LABEL_COLUMNS
    if wide:
        table.add_column("labels (most common first)", overflow="fold")
    else:
        for name in report.label_names:
            table.add_column(name, justify="right")
    sites = len(report.counts)
    shown = range(sites) if sites <= MAX_ROWS else range(HEAD)
    for i in shown:
        row = report.counts[i]
        cells = [report.site_name(i), *([report.groups[i]] if report.groups else []), str(int(row.sum()))]
        if wide:
            top = sorted(range(len(row)), key=lambda k: -int(row[k]))[:4]
            cells.append(", ".join(f"{report.label_names[k]}:{int(row[k])}" for k in top if row[k]))
        else:
            cells += [str(int(c)) for c in row]
        table.add_row(*cells)
    if sites > MAX_ROWS:
        table.add_row(f"… {sites - HEAD} more", *([""] * (len(table.columns) - 1)))
    return Group(table, Text(summary_line(report), style="dim"))


def print_report(console: Console, path: str) -> None:
    """Print the report saved at ``path`` (``partition.json``) as :func:`partition_table`."""
    console.print(partition_table(PartitionReport.load(Path(path))))
