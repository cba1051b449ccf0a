"""``fedguard privacy ledger`` on an 80-column terminal: one header line, the naive Σε defined where shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from privacy.ledger import Charge, SiteLedger

M = "ab" * 32


def test_the_header_fits_80_columns(tmp_path: Path) -> None:
    path = tmp_path / "site.db"
    ledger = SiteLedger.open(path)
    try:
        ledger.set_cap("hospital-north", 8.0, 1e-5, actor="test")
        for rnd in (1, 2, 3):
            ledger.record(Charge("hospital-north", M, "run-1", rnd, "record", 1.1, 0.05, 40, 1e-5))
        ledger.record(Charge("hospital-north", M, "run-1", 1, "site", 2.0, 0.5, 5, 1e-5))
    finally:
        ledger.close()
    env = {**os.environ, "COLUMNS": "80", "LINES": "40", "TERM": "dumb"}
    env.pop("NO_COLOR", None)
    result = subprocess.run([sys.executable, "-m", "fedguard.cli", "privacy", "ledger", "--ledger", str(path)],
                            env=env, capture_output=True, text=True, timeout=120, check=True)
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), result.stdout
    header = next(line for line in lines if "site" in line and "level" in line)
    for title in ("site", "manifest", "level", "runs", "ε spent", "δ", "ε cap", "ε left", "Σε naive"):
        assert title in header, result.stdout
    assert any("hospital-north" in line for line in lines)
    assert "Σε naive: sum of the ε of each charge" in result.stdout  # what the column is, said where it is shown
