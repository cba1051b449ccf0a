"""Scoring a validated file in chunks into a Parquet file that appears whole or not at all, audited.

:func:`score_file` runs, in this order:

1. resolve ``NAME[:VERSION]`` (newest version without one) and refuse a
   version tainted by a consent withdrawal (exit 11), as serving does;
2. verify the signature and open the signed ONNX export
   (:func:`serving.models.load_version`: a tampered file is named, exit 5);
3. hash the input (SHA-256), then read it once end to end and check every
   row (:mod:`.inputs`): any problem stops here, all of them listed, exit 2;
4. read it again chunk by chunk, score each chunk, shape the answer with
   :func:`serving.guards.outputs.shape_output` under the model's configured
   output policy (``FEDGUARD_SERVE_OUTPUTS``, labels only by default: the
   very function the predict route calls), and append it to a temporary
   ``<output>.<random>.partial`` next to the output with a
   ``pyarrow.parquet.ParquetWriter`` (one row group per chunk);
5. hash the input again (a file that changed while it was scored is refused),
   hash the output, write the audit event ``model.batch_scored``, and only
   then rename the partial file onto the output name (``os.replace``, atomic
   on one file system). Any failure removes the partial file: a crash leaves
   no half file under the output name, and an output never exists without
   its audit event.

``raw_outputs`` (the CLI's ``--raw-outputs``, which needs an admin-scoped API
key) writes every class's probability at full precision instead.

Notes
-----
Output hardening is the same as the API's because the file is an answer too:
a probability table leaks membership and enables extraction exactly as a
stream of API answers does (Shokri et al. 2017; Tramèr et al. 2016).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from lifecycle import audit
from lifecycle.errors import ConfigurationError, GovernanceError, StateError
from lifecycle.governance.consent import ConsentStore
from lifecycle.registry import Registry
from serving.batch.inputs import DEFAULT_CHUNK_ROWS, FeatureReader, InputFile, Problems, open_input
from serving.guards.outputs import check_policies, shape_output
from serving.guards.ranges import FeatureRanges
from serving.models import ServedModel, load_version
from serving.settings import OutputPolicy, ServingSettings

AUDIT_ACTION = "model.batch_scored"
PREDICTION = "prediction"
RAW = "raw"
_HASH_BLOCK = 1 << 20


class Progress(Protocol):
    """What :func:`score_file` reports while it works (the CLI draws a Rich progress bar from it)."""

    def phase(self, name: str, total: int | None) -> None: ...

    def advance(self, rows: int) -> None: ...


class _Silent:
    def phase(self, name: str, total: int | None) -> None:
        """Nothing to show."""

    def advance(self, rows: int) -> None:
        """Nothing to show."""


@dataclass(frozen=True)
class BatchReport:
    """What one batch scoring did (also what its audit event records, besides the actor)."""

    model: str
    version: int
    rows: int
    input_sha256: str
    output_sha256: str
    output_mode: str
    output: Path
    seconds: float

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"


def sha256_file(path: Path) -> str:
    """The SHA-256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def load_for_batch(registry: Registry, ref: str, settings: ServingSettings) -> ServedModel:
    """The verified model version named by ``ref``, refused if a consent withdrawal taints it.

    Raises
    ------
    NotFoundError
        No such model or version (exit 4).
    GovernanceError
        The version is tainted by a consent withdrawal (exit 11).
    SignatureError
        The signature does not verify (exit 5), naming the file that differs.
    StateError
        The artifact or key is missing, or the model has no ONNX export (exit 3).
    """
    record = registry.resolve(ref)
    if record.version in ConsentStore(registry).tainted_versions(record.name):
        raise GovernanceError(f"{record.ref} is tainted by a consent withdrawal and may not score data; "
                              "use a version trained without the withdrawn data")
    key = settings.public_key or registry.public_key_path()
    return load_version(record, key, threads=settings.onnx_threads)


def score_file(
    registry: Registry,
    ref: str,
    source: Path,
    output: Path,
    *,
    settings: ServingSettings,
    actor: str,
    id_column: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    raw_outputs: bool = False,
    raw_key_id: str | None = None,
    progress: Progress | None = None,
) -> BatchReport:
    """Validate ``source`` against model ``ref``, score it into ``output`` (Parquet), audit it (see the module).

    ``raw_key_id`` is the admin key that allowed ``raw_outputs`` (the caller
    authenticated it); it is recorded in the audit event.

    Raises
    ------
    InputValidationError
        The file does not fit the schema; the message lists every problem.
    ConfigurationError
        A bad chunk size, a file that cannot be read, or an output path that is the input.
    """
    started = time.perf_counter()
    shown = progress or _Silent()
    if chunk_rows < 1:
        raise ConfigurationError(f"--chunk-rows is {chunk_rows}; pass a positive number of rows")
    if output.resolve() == source.resolve():
        raise ConfigurationError(f"--output '{output}' is the input file; write the predictions elsewhere")
    model = load_for_batch(registry, ref, settings)
    model_ref = f"{model.name}:{model.version}"
    check_policies(settings, {model.name: model})  # a top_k above the model's classes: exit 2, as serve does
    ranges = FeatureRanges()
    ranges.add(settings.feature_ranges, model)
    policy = OutputPolicy(output_mode="probabilities", precision=None) if raw_outputs else (
        settings.output_policy(model.name))
    mode = RAW if raw_outputs else policy.output_mode
    file = open_input(source)
    input_digest = sha256_file(source)
    problems = Problems()
    reader = FeatureReader(model, file, ranges.by_model.get(model.name), id_column, problems)
    rows = _validate(file, reader, chunk_rows, shown)
    if rows == 0 and not problems:
        problems.add("", "the file has no rows")
    problems.raise_if_any(source, model_ref)
    schema = _output_schema(model, file, id_column, policy, mode)
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".partial")
    os.close(handle)
    partial = Path(name)
    try:
        shown.phase("scoring", rows)
        scored = _score(file, reader, model, policy, schema, id_column, chunk_rows, partial, shown)
        if scored != rows or sha256_file(source) != input_digest:
            raise StateError(f"'{source}' changed while it was scored; score it again once nothing writes to it")
        output_digest = sha256_file(partial)
        details: dict[str, Any] = {"rows": rows, "input_sha256": input_digest, "output_sha256": output_digest,
                                   "output_mode": mode, "input_format": file.format}
        if raw_outputs:
            details["admin_key_id"] = raw_key_id
        with registry.transaction() as session:
            audit.record(session, AUDIT_ACTION, actor=actor[:128], subject=model_ref, details=details)
        os.replace(partial, output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _sync_directory(output.parent)
    return BatchReport(model.name, model.version, rows, input_digest, output_digest, mode, output,
                       time.perf_counter() - started)


def _validate(file: InputFile, reader: FeatureReader, chunk_rows: int, shown: Progress) -> int:
    """Read the whole file once, recording every problem; the number of rows."""
    shown.phase("validating", file.rows)
    rows = 0
    for chunk in file.chunks(reader.columns, chunk_rows):
        reader.batch(chunk, rows)
        rows += chunk.num_rows
        shown.advance(chunk.num_rows)
    return rows


def _score(file: InputFile, reader: FeatureReader, model: ServedModel, policy: OutputPolicy, schema: pa.Schema,
           id_column: str | None, chunk_rows: int, partial: Path, shown: Progress) -> int:
    """Score every chunk into ``partial``; the number of rows written."""
    rows = 0
    with pq.ParquetWriter(partial, schema) as writer:
        for chunk in file.chunks(reader.columns, chunk_rows):
            batch = reader.batch(chunk, rows)
            if reader.problems:  # the file changed since it validated
                return -1
            fields = shape_output(model, batch, policy)
            arrays = [chunk.column(id_column)] if id_column else []
            arrays += [pa.array(values, schema.field(name).type)
                       for name, values in _columns(fields).items()]
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
            rows += chunk.num_rows
            shown.advance(chunk.num_rows)
    with partial.open("rb+") as handle:
        os.fsync(handle.fileno())
    return rows


def _columns(fields: dict[str, Any]) -> dict[str, Any]:
    """The output columns of one chunk from the route's answer fields (``classes`` goes to the metadata)."""
    columns = {PREDICTION: fields["predictions"]}
    for name in ("top_k", "probabilities"):
        if name in fields:
            columns[name] = fields[name]
    return columns


def _output_schema(model: ServedModel, file: InputFile, id_column: str | None, policy: OutputPolicy,
                   mode: str) -> pa.Schema:
    label: pa.DataType = pa.string() if model.schema.labels else pa.int64()
    fields = [pa.field(id_column, file.types[id_column])] if id_column else []
    if id_column == PREDICTION or id_column in ("top_k", "probabilities"):
        raise ConfigurationError(f"--id-column '{id_column}' has the name of an output column; rename it")
    fields.append(pa.field(PREDICTION, label))
    if policy.output_mode == "top-k":
        fields.append(pa.field("top_k", pa.list_(pa.struct([("label", label), ("score", pa.float64())]))))
    elif policy.output_mode == "probabilities":
        fields.append(pa.field("probabilities", pa.list_(pa.float64())))
    metadata = {"fedguard.model": f"{model.name}:{model.version}", "fedguard.output_mode": mode,
                "fedguard.classes": json.dumps(model.class_names()),
                "fedguard.precision": json.dumps(None if mode == RAW else policy.precision)}
    return pa.schema(fields, metadata=metadata)


def _sync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX: fsync the directory); a no-op where directories cannot be opened."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def class_order(path: Path) -> list[Any]:
    """The class order of a predictions file's ``probabilities`` lists (its ``fedguard.classes`` metadata)."""
    metadata = pq.read_schema(path).metadata or {}
    classes: list[Any] = json.loads(metadata[b"fedguard.classes"])
    return classes


__all__ = ["AUDIT_ACTION", "BatchReport", "Progress", "class_order", "load_for_batch", "score_file",
           "sha256_file"]
