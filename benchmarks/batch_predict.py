"""Batch scoring (``fedguard predict``) of a million-row Parquet file ÷ a bare ONNX Runtime loop over the same file.

Usage: ``python benchmarks/batch_predict.py [--rows 1000000] [--features 16] [--chunk-rows 65536] [--repeats 3]
[--no-results]``

What is measured (a fresh ``FEDGUARD_HOME`` in a temporary directory, one signed model of ``--features``
inputs and two classes published into it, one Parquet file of ``--rows`` rows of float64 features and an
int64 id, in row groups of 250,000 rows):

* ours: ``fedguard predict wide --input rows.parquet --output p.parquet --id-column id --json`` in a
  fresh process, as an operator runs it: signature verification, the validation pass over every row, the
  scoring pass (labels only, the default output policy), digests, the audit event and the atomic rename.
  The rate is rows ÷ the command's own elapsed time (``seconds`` of its JSON summary: from resolving the
  model to the rename, without the interpreter's start); the process's wall time is reported beside it;
* baseline: the same ONNX file in an ONNX Runtime session (one thread, as fedguard opens it), the same
  Parquet file read with ``iter_batches`` in chunks of the same size, argmax, and the labels written with
  a ``ParquetWriter``: scoring without verification, validation, hardening or audit, in this process.

The medians of ``--repeats`` runs are printed with their ratio, and a row is appended to
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from results import append_row, machine  # noqa: E402  # benchmarks/results.py (scripts run from benchmarks/)

ROW_GROUP = 250_000


def write_rows(path: Path, rows: int, features: int, seed: int = 0) -> None:
    """``rows`` rows of ``features`` float64 columns ``f0``… and an int64 ``id``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    schema = pa.schema([("id", pa.int64()), *[(f"f{j}", pa.float64()) for j in range(features)]])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, ROW_GROUP):
            n = min(ROW_GROUP, rows - start)
            columns = [pa.array(np.arange(start, start + n))] + [pa.array(c) for c in rng.normal(size=(features, n))]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def publish(home: Path, features: int) -> Path:
    """Publish a signed model 'wide' of ``features`` inputs into ``home``; the path of its ONNX export."""
    os.environ["FEDGUARD_HOME"] = str(home)
    from lifecycle.artifacts import ONNX_NAME
    from lifecycle.packaging import publish_model
    from lifecycle.registry import Registry
    from lifecycle.settings import get_settings

    get_settings.cache_clear()
    sys.path.insert(0, str(REPO / "tests"))
    from tests.conftest import make_publication

    record = publish_model(Registry.open(), make_publication("wide", features=features))
    return record.artifact.model_dir / ONNX_NAME


def ours(home: Path, source: Path, out: Path, chunk: int) -> tuple[float, float]:
    """One ``fedguard predict`` process: (the command's own seconds, the process's wall seconds)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGUARD_")}
    env.update(FEDGUARD_HOME=str(home), PYTHONPATH=str(REPO))
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "fedguard.cli", "predict", "wide", "--input", str(source),
                             "--output", str(out), "--id-column", "id", "--chunk-rows", str(chunk), "--json",
                             "--quiet"], env=env, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"fedguard predict failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return float(json.loads(result.stdout)["seconds"]), wall


def baseline(onnx_path: Path, source: Path, out: Path, features: int, chunk: int) -> float:
    """Seconds for a bare ONNX Runtime loop: read in chunks, run, argmax, write the labels."""
    import numpy as np
    import onnxruntime as ort
    import pyarrow as pa
    import pyarrow.parquet as pq

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    columns = [f"f{j}" for j in range(features)]
    schema = pa.schema([("id", pa.int64()), ("prediction", pa.int64())])
    started = time.perf_counter()
    with pq.ParquetWriter(out, schema) as writer:
        for batch in pq.ParquetFile(source).iter_batches(batch_size=chunk, columns=["id", *columns]):
            x = np.column_stack([batch.column(c).to_numpy() for c in columns]).astype(np.float32)
            labels = session.run(None, {name: x})[0].argmax(axis=1)
            writer.write_batch(pa.record_batch([batch.column("id"), pa.array(labels)], schema=schema))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--chunk-rows", type=int, default=65_536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-results", action="store_true", help="Do not append to RESULTS.md.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fg-batch-") as tmp:
        root = Path(tmp)
        onnx_path = publish(root / "home", args.features)
        source = root / "rows.parquet"
        write_rows(source, args.rows, args.features)
        ours_s, walls, base_s = [], [], []
        for _ in range(args.repeats):
            own, wall = ours(root / "home", source, root / "p.parquet", args.chunk_rows)
            ours_s.append(own)
            walls.append(wall)
            base_s.append(baseline(onnx_path, source, root / "b.parquet", args.features, args.chunk_rows))
    ours_rate, base_rate = args.rows / statistics.median(ours_s), args.rows / statistics.median(base_s)
    wall_rate = args.rows / statistics.median(walls)
    ratio = ours_rate / base_rate
    print(f"fedguard predict: {ours_rate:,.0f} rows/s ({statistics.median(ours_s):.2f} s; process wall "
          f"{statistics.median(walls):.2f} s = {wall_rate:,.0f} rows/s)")
    print(f"bare ONNX Runtime loop: {base_rate:,.0f} rows/s ({statistics.median(base_s):.2f} s)")
    print(f"ratio: {ratio:.2f}x")
    if not args.no_results:
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        append_row(
            f"| {time.strftime('%Y-%m-%d')} | batch_predict | `fedguard predict` of {args.rows:,} rows × "
            f"{args.features} features (Parquet, labels only, chunks of {args.chunk_rows:,}) vs a bare ONNX Runtime "
            f"loop over the same file, median of {args.repeats} | {ours_rate:,.0f} rows/s | {base_rate:,.0f} rows/s "
            f"| {ratio:.2f}x | ours includes signature check, a validation pass over every row, two SHA-256 of the "
            f"input and one of the output, the audit event; process wall incl. start {wall_rate:,.0f} rows/s; "
            f"load average {load} | {machine()} |"
        )


if __name__ == "__main__":
    main()
