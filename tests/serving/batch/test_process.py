"""``fedguard predict`` as a real process: no torch or training code, documented exit codes, bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lifecycle.packaging import publish_model
from lifecycle.registry import Registry, VersionRecord
from tests.conftest import make_publication
from tests.serving.test_process_imports import ROOT, _env, forbidden

# Runs `fedguard predict` exactly as the console script does and writes the loaded modules when it exits.
PREDICT = """
import atexit, json, runpy, sys
dump = sys.argv[1]
atexit.register(lambda: open(dump, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["fedguard", "predict", *sys.argv[2:]]
runpy.run_module("fedguard.cli", run_name="__main__")
"""
# Scores a file of one chunk (imports, model load, one chunk's buffers: the baseline), resets the peak resident
# set, scores the million rows, and prints the peak (VmHWM) before and after. Not resource.getrusage: a child's
# ru_maxrss starts at its parent's peak (Linux keeps it across fork and exec), here the test process's, which
# would hide the child's growth below it; writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS.
MEMORY = """
import json, sys
from pathlib import Path
from lifecycle.registry import Registry
from serving.batch.scoring import score_file
from serving.settings import ServingSettings

def peak():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

small, big, out, chunk = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
registry, settings = Registry.open(), ServingSettings()
score_file(registry, "wide", small, out, settings=settings, actor="user:test", chunk_rows=chunk, id_column="id")
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")
before = peak()
report = score_file(registry, "wide", big, out, settings=settings, actor="user:test", chunk_rows=chunk,
                    id_column="id")
print(json.dumps({"before": before, "after": peak(), "rows": report.rows, "seconds": report.seconds,
                  "modules": sorted(sys.modules)}))
"""
WIDE = 16
MILLION = 1_000_000
CHUNK = 8_192
"""Rows per chunk here: the working set grows with the chunk (~35 MiB at 8,192 rows of 16 features, ~80 MiB at
65,536), not with the file (the same from 262k to 2M rows)."""
BOUND = 64 * 2**20


def write_rows(path: Path, rows: int, features: int, *, seed: int = 0, row_group: int = 250_000) -> Path:
    """``rows`` rows of ``features`` float64 columns ``f0``… and an int64 ``id``, written one row group at a time."""
    rng = np.random.default_rng(seed)
    schema = pa.schema([("id", pa.int64()), *[(f"f{j}", pa.float64()) for j in range(features)]])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, row_group):
            n = min(row_group, rows - start)
            columns = [pa.array(np.arange(start, start + n))] + [pa.array(c) for c in rng.normal(size=(features, n))]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
    return path


def _predict(home: Path, dump: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PREDICT, str(dump), *args], env=_env(home), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_the_command_scores_without_torch_and_exits_2_on_a_bad_file(
    registry: Registry, published: VersionRecord, fedguard_home: Path, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,f0,f1,f2,f3\n1,0.5,-1,2,0\n2,3,3,-3,1\n")
    out, dump = tmp_path / "p.parquet", tmp_path / "modules.json"
    result = _predict(fedguard_home, dump, "demo:1", "--input", str(source), "--output", str(out),
                      "--id-column", "id", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == 2
    assert pq.read_table(out).column_names == ["id", "prediction"]
    modules = json.loads(dump.read_text())
    assert "serving.batch.scoring" in modules and "onnxruntime" in modules
    assert forbidden(modules) == []
    source.write_text("id,f0,f1,f2\n1,a,-1,2\n")
    result = _predict(fedguard_home, dump, "demo", "--input", str(source), "--output", str(out))
    assert result.returncode == 2, result.stderr
    assert "missing column 'f3'" in result.stderr and "column 'f0': 1 value not numbers (row 1)" in result.stderr
    assert pq.read_table(out).num_rows == 2  # the earlier output is untouched


def test_a_million_rows_score_in_bounded_memory(
    registry: Registry, fedguard_home: Path, tmp_path: Path
) -> None:
    publish_model(registry, make_publication("wide", features=WIDE))
    small = write_rows(tmp_path / "small.parquet", 8 * CHUNK, WIDE)
    big = write_rows(tmp_path / "big.parquet", MILLION, WIDE, seed=1)
    decoded = MILLION * (WIDE + 1) * 8  # what the file's columns take in memory, read whole: 136 MB
    env = {**_env(fedguard_home), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", MEMORY, str(small), str(big), str(tmp_path / "o.parquet"),
                             str(CHUNK)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout)
    assert measured["rows"] == MILLION
    assert forbidden(measured["modules"]) == []
    growth = measured["after"] - measured["before"]
    assert growth < BOUND < decoded / 2, f"peak RSS grew {growth / 2**20:.0f} MiB for a million rows"
    assert pq.ParquetFile(tmp_path / "o.parquet").metadata.num_rows == MILLION
    print(f"{MILLION / measured['seconds']:,.0f} rows/s; peak RSS growth {growth / 2**20:.1f} MiB",
          file=sys.stderr)
    assert os.path.getsize(big) > decoded / 2
