"""Recording benchmark results in ``benchmarks/RESULTS.md``.

Rows go into the one results table (right after its last row, so sections
below it stay intact); longer write-ups go at the end as sections.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "| date | benchmark | what | ours | baseline | ratio | notes | machine |"


def machine() -> str:
    """The machine's description recorded beside every figure."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def append_row(row: str) -> None:
    """Insert a table row (``| … |``) after the last row of the results table."""
    lines = RESULTS.read_text().splitlines() if RESULTS.exists() else ["# Benchmark results", ""]
    if HEADER not in lines:
        lines += ["", HEADER, "|---|---|---|---|---|---|---|---|"]
    at = lines.index(HEADER) + 2
    while at < len(lines) and lines[at].startswith("|"):
        at += 1
    lines.insert(at, row.rstrip("\n"))
    RESULTS.write_text("\n".join(lines) + "\n")


def append_section(text: str) -> None:
    """Append a free-form section (a heading, a command, a table) at the end."""
    with RESULTS.open("a") as handle:
        handle.write("\n" + text.rstrip("\n") + "\n")
