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
   Rows whose data subject objected to the model in the environment
   (``subject_column``, :mod:`lifecycle.governance.objections`) are not
   given to the model: their outputs are empty and ``objected`` is true;
4b. a model with objections on record is not scored without a subject
   column at all (exit 11): the file could hold an objecting subject's row;
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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lifecycle import audit
from lifecycle.errors import ConfigurationError, GovernanceError, StateError
from lifecycle.governance.consent import ConsentStore
from lifecycle.governance.objections import ObjectionStore, subject_digest
from lifecycle.registry import Registry
from lifecycle.registry.deployments import DEFAULT_ENVIRONMENT
from serving.batch.inputs import DEFAULT_CHUNK_ROWS, FeatureReader, InputFile, Problems, open_input
from serving.guards.outputs import check_policies, shape_output
from serving.guards.ranges import FeatureRanges
from serving.models import ServedModel, load_version
from serving.settings import OutputPolicy, ServingSettings

AUDIT_ACTION = "model.batch_scored"
PREDICTION = "prediction"
OBJECTED = "objected"
OUTPUT_COLUMNS = (PREDICTION, "top_k", "probabilities", OBJECTED)
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
    objected: int = 0

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
    subject_column: str | None = None,
    environment: str = DEFAULT_ENVIRONMENT,
) -> BatchReport:
    """Validate ``source`` against model ``ref``, score it into ``output`` (Parquet), audit it (see the module).

    ``raw_key_id`` is the admin key that allowed ``raw_outputs`` (the caller
    authenticated it); it is recorded in the audit event. ``subject_column``
    names the column of data subjects' identifiers: rows of subjects who
    objected to the model in ``environment`` are left unscored.

    Raises
    ------
    InputValidationError
        The file does not fit the schema; the message lists every problem.
    ConfigurationError
        A bad chunk size, a file that cannot be read, or an output path that is the input.
    GovernanceError
        Subjects objected to the model in ``environment`` and no ``subject_column`` says whose rows these are.
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
    objections = _Objections.load(registry, model.name, environment, subject_column)
    file = open_input(source)
    input_digest = sha256_file(source)
    problems = Problems()
    reader = FeatureReader(model, file, ranges.by_model.get(model.name), id_column, problems, subject_column)
    rows = _validate(file, reader, chunk_rows, shown)
    if rows == 0 and not problems:
        problems.add("", "the file has no rows")
    problems.raise_if_any(source, model_ref)
    schema = _output_schema(model, file, id_column, policy, mode, subject_column is not None)
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".partial")
    os.close(handle)
    partial = Path(name)
    try:
        shown.phase("scoring", rows)
        scored = _score(file, reader, model, policy, schema, id_column, chunk_rows, partial, shown, objections)
        if scored != rows or sha256_file(source) != input_digest:
            raise StateError(f"'{source}' changed while it was scored; score it again once nothing writes to it")
        output_digest = sha256_file(partial)
        details: dict[str, Any] = {"rows": rows, "input_sha256": input_digest, "output_sha256": output_digest,
                                   "output_mode": mode, "input_format": file.format}
        if raw_outputs:
            details["admin_key_id"] = raw_key_id
        if subject_column is not None:
            details.update(environment=environment, subject_column=subject_column, objected=objections.refused)
        with registry.transaction() as session:
            audit.record(session, AUDIT_ACTION, actor=actor[:128], subject=model_ref, details=details)
        os.replace(partial, output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _sync_directory(output.parent)
    return BatchReport(model.name, model.version, rows, input_digest, output_digest, mode, output,
                       time.perf_counter() - started, objections.refused)


class _Objections:
    """The subjects who objected to one model in one environment, as digests; and how many rows were refused."""

    def __init__(self, key: bytes | None, listed: frozenset[str]) -> None:
        self.key = key
        self.listed = listed
        self.refused = 0

    @classmethod
    def load(cls, registry: Registry, model: str, environment: str, subject_column: str | None) -> _Objections:
        """The model's list; refuses a file without a subject column while the list is not empty.

        Raises
        ------
        GovernanceError
            Subjects objected and nobody said whose rows the file holds (exit 11).
        StateError
            The subject key is missing or is not the one the objections were recorded with (exit 3).
        """
        store = ObjectionStore(registry)
        listed = store.digests(model, environment)
        if not listed:
            return cls(None, listed)
        if subject_column is None:
            raise GovernanceError(
                f"{len(listed):,} data subject(s) objected to {model} in environment '{environment}', and the file's "
                "rows name no subject; pass --subject-column COLUMN (the column of subject identifiers) so their "
                "rows are left unscored")
        return cls(store.key(create=False), listed)

    def mask(self, subjects: pa.Array | None) -> np.ndarray | None:
        """Which rows belong to an objecting subject (``None``: no subject column or no objection)."""
        if subjects is None:
            return None
        if self.key is None:  # nobody objected: every row is scored
            return np.zeros(len(subjects), dtype=bool)
        key, listed = self.key, self.listed
        refused = np.fromiter((value is not None and subject_digest(key, value) in listed
                               for value in subjects.to_pylist()), dtype=bool, count=len(subjects))
        self.refused += int(refused.sum())
        return refused


def _validate(file: InputFile, reader: FeatureReader, chunk_rows: int, shown: Progress) -> int:
    """Read the whole file once, recording every problem; the number of rows."""
    shown.phase("validating", file.rows)
    rows = 0
    for chunk in file.chunks(reader.columns, chunk_rows):
        reader.batch(chunk, rows)
        reader.subjects(chunk, rows)
        rows += chunk.num_rows
        shown.advance(chunk.num_rows)
    return rows


def _score(file: InputFile, reader: FeatureReader, model: ServedModel, policy: OutputPolicy, schema: pa.Schema,
           id_column: str | None, chunk_rows: int, partial: Path, shown: Progress, objections: _Objections) -> int:
    """Score every chunk into ``partial``; the number of rows written."""
    rows = 0
    with pq.ParquetWriter(partial, schema) as writer:
        for chunk in file.chunks(reader.columns, chunk_rows):
            batch = reader.batch(chunk, rows)
            refused = objections.mask(reader.subjects(chunk, rows))
            if reader.problems:  # the file changed since it validated
                return -1
            columns = _scored_columns(model, batch, policy, refused)
            arrays = [chunk.column(id_column)] if id_column else []
            arrays += [pa.array(columns[field.name], field.type) for field in schema if field.name != id_column]
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
            rows += chunk.num_rows
            shown.advance(chunk.num_rows)
    with partial.open("rb+") as handle:
        os.fsync(handle.fileno())
    return rows


def _scored_columns(model: ServedModel, batch: np.ndarray, policy: OutputPolicy,
                    refused: np.ndarray | None) -> dict[str, Any]:
    """The output columns of one chunk; rows in ``refused`` never reach the model and stay empty."""
    if refused is None:
        return _columns(shape_output(model, batch, policy))
    if not refused.any():
        return {**_columns(shape_output(model, batch, policy)), OBJECTED: refused.tolist()}
    kept = np.flatnonzero(~refused)
    scored = _columns(shape_output(model, batch[kept], policy)) if kept.size else {}
    columns: dict[str, Any] = {OBJECTED: refused.tolist()}
    for name, values in scored.items():
        full: list[Any] = [None] * len(refused)
        for row, value in zip(kept.tolist(), values, strict=True):
            full[row] = value
        columns[name] = full
    if not kept.size:  # every row objected: the mode's columns are all empty
        for name in (PREDICTION, "top_k", "probabilities"):
            columns[name] = [None] * len(refused)
    return columns


def _columns(fields: dict[str, Any]) -> dict[str, Any]:
    """The output columns of one chunk from the route's answer fields (``classes`` goes to the metadata)."""
    columns = {PREDICTION: fields["predictions"]}
    for name in ("top_k", "probabilities"):
        if name in fields:
            columns[name] = fields[name]
    return columns


def _output_schema(model: ServedModel, file: InputFile, id_column: str | None, policy: OutputPolicy,
                   mode: str, subjects: bool = False) -> pa.Schema:
    label: pa.DataType = pa.string() if model.schema.labels else pa.int64()
    fields = [pa.field(id_column, file.types[id_column])] if id_column else []
    if id_column in OUTPUT_COLUMNS:
        raise ConfigurationError(f"--id-column '{id_column}' has the name of an output column; rename it")
    fields.append(pa.field(PREDICTION, label))
    if policy.output_mode == "top-k":
        fields.append(pa.field("top_k", pa.list_(pa.struct([("label", label), ("score", pa.float64())]))))
    elif policy.output_mode == "probabilities":
        fields.append(pa.field("probabilities", pa.list_(pa.float64())))
    if subjects:
        fields.append(pa.field(OBJECTED, pa.bool_()))
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
