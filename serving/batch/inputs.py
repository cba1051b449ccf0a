"""An input file read in bounded chunks, and checked against a model's schema as the predict route checks a request.

A file is CSV (``.csv``) or Parquet (``.parquet``, ``.pq``). Only the model's
feature columns (and the id column, if one is named) are read; other columns
are ignored. Parquet is read with ``ParquetFile.iter_batches``, CSV with
pyarrow's streaming reader (``pyarrow.csv.open_csv``, one block at a time),
and both are cut into chunks of ``chunk_rows`` rows: memory holds one chunk
(plus one CSV block or one Parquet page), never the file.

What a value must be is what the predict route demands of a JSON instance
(:meth:`serving.models.ServedModel.to_batch`, :mod:`serving.guards.ranges`):

- the column exists (matched by name, in any order);
- it holds numbers: a Parquet integer, floating-point or decimal column (a
  boolean or text column is refused, as the route refuses ``true`` and
  ``"1.5"``); a CSV field that spells a decimal number;
- no value is missing (a Parquet null, an empty CSV field or ``NA``);
- every value is finite and inside the float32 range;
- every value lies inside the operator's configured range for its feature
  (``FEDGUARD_SERVE_FEATURE_RANGES``), compared as float32, as the route does.

:class:`Problems` gathers every failure of the whole file, counted per column
and kind with the first rows that show it, so one run reports them all. Rows
are counted from 1 (the first data row; a CSV header is not a row). Messages
name columns, rows and configured ranges, never a value: they reach logs.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from lifecycle.errors import ConfigurationError, InputValidationError
from lifecycle.governance.objections import SUBJECT_ID_PATTERN, SUBJECT_ID_RULE
from serving.guards.ranges import ModelRanges
from serving.models import FLOAT32_MAX, ServedModel

DEFAULT_CHUNK_ROWS = 65_536
"""Rows scored at once by default: ~2 MB of float32 for 8 features; ONNX Runtime's per-call cost amortised."""
CSV_BLOCK_BYTES = 4 << 20
"""Bytes the CSV reader parses at once (its unit of streaming; chunks are cut from these blocks)."""
PARQUET_BUFFER = 1 << 20
"""Bytes of a Parquet column read at once (a buffered stream instead of whole column chunks)."""
SHOWN_ROWS = 3
"""Rows named per problem in the error message."""
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_NUMBER = r"(?i)^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)(e[+-]?[0-9]+)?$|^[+-]?(inf|infinity)$"
"""A CSV field that is a decimal number (``inf`` is read, then refused as not finite, as JSON's overflow is)."""


@dataclass
class Problems:
    """Every way a file fails the schema: per (column, problem), a count and the first rows that show it."""

    found: dict[tuple[str, str], tuple[int, list[int]]] = field(default_factory=dict)

    def add(self, column: str, problem: str, rows: np.ndarray | None = None, offset: int = 0) -> None:
        """Record ``problem`` for ``column`` at ``rows`` (indices into a chunk starting at row ``offset``)."""
        count, first = self.found.get((column, problem), (0, []))
        if rows is None:
            self.found[(column, problem)] = (count, first)
            return
        if rows.size == 0:
            return
        shown = [offset + int(i) + 1 for i in rows[: max(0, SHOWN_ROWS - len(first))]]
        self.found[(column, problem)] = (count + int(rows.size), first + shown)

    def __bool__(self) -> bool:
        return bool(self.found)

    def describe(self) -> list[str]:
        """One phrase per problem, in the order they were first met."""
        phrases = []
        for (column, problem), (count, rows) in self.found.items():
            if not column:  # the file as a whole
                phrases.append(problem)
                continue
            if not rows:
                whole = problem.endswith("column")
                phrases.append(f"{problem} '{column}'" if whole else f"column '{column}' {problem}")
                continue
            more = ", …" if count > len(rows) else ""
            noun = "value" if count == 1 else "values"
            where = "row" if len(rows) == 1 and not more else "rows"
            phrases.append(f"column '{column}': {count:,} {noun} {problem} ({where} {', '.join(map(str, rows))}{more})")
        return phrases

    def raise_if_any(self, source: Path, ref: str) -> None:
        """Raise one :class:`InputValidationError` listing every problem (exit code 2), if there is any."""
        if not self.found:
            return
        phrases = self.describe()
        raise InputValidationError(
            f"'{source.name}' does not fit the schema of {ref} ({len(phrases)} problem"
            f"{'s' if len(phrases) != 1 else ''}; rows count from 1): {'; '.join(phrases)}; "
            "fix the file and run again (nothing was scored)"
        )


@dataclass(frozen=True)
class InputFile:
    """A CSV or Parquet file: its columns and, for Parquet, their types and row count."""

    path: Path
    format: str
    columns: tuple[str, ...]
    types: dict[str, pa.DataType]
    rows: int | None  # known up front for Parquet; CSV rows are counted while validating

    def chunks(self, columns: list[str], chunk_rows: int) -> Iterator[pa.RecordBatch]:
        """``columns`` in record batches of ``chunk_rows`` rows (the last may be shorter), streamed from disk."""
        if self.format == "parquet":
            # No pre-buffering and a 1 MiB read buffer: Arrow otherwise reads whole column chunks ahead
            # (190 MB allocated for 1M rows × 17 columns in row groups of 250k, against 63 MB this way).
            parquet = pq.ParquetFile(self.path, memory_map=False, pre_buffer=False, buffer_size=PARQUET_BUFFER)
            done = 0
            try:
                batches = parquet.iter_batches(batch_size=chunk_rows, columns=columns, use_threads=False)
                for chunk in _rechunk(batches, chunk_rows):
                    done += chunk.num_rows
                    yield chunk
            except (pa.ArrowInvalid, OSError) as exc:  # a damaged or truncated file
                raise ConfigurationError(f"'{self.path.name}' cannot be read as Parquet after row {done:,} "
                                         f"({type(exc).__name__}); pass an intact Parquet file") from exc
            finally:
                parquet.close()
            return
        done = 0
        try:
            reader = pacsv.open_csv(  # parses the first block already
                self.path,
                read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                convert_options=pacsv.ConvertOptions(include_columns=columns, strings_can_be_null=True,
                                                     column_types={c: pa.string() for c in columns}),
            )
        except pa.ArrowInvalid as exc:
            raise self._broken(done) from exc
        try:
            for chunk in _rechunk(reader, chunk_rows):
                done += chunk.num_rows
                yield chunk
        except pa.ArrowInvalid as exc:
            raise self._broken(done) from exc
        finally:
            reader.close()

    def _broken(self, rows: int) -> InputValidationError:
        """A CSV parse error, by position: Arrow's own message quotes the offending line, whose values stay out."""
        return InputValidationError(
            f"'{self.path.name}' is not a well-formed CSV file after row {rows:,} (a line with another number "
            "of fields than the header, or broken quoting); fix the file and run again"
        )


def open_input(path: Path) -> InputFile:
    """The file at ``path``, by its suffix; its header or footer only is read here.

    Raises
    ------
    ConfigurationError
        The file is missing, has another suffix, or cannot be read as its format says.
    """
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ConfigurationError(f"input '{path}' is neither .csv nor .parquet; pass a CSV or Parquet file")
    if not path.is_file():
        raise ConfigurationError(f"input '{path}' does not exist; pass an existing file")
    try:
        if kind == "parquet":
            parquet = pq.ParquetFile(path, memory_map=False)
            try:
                schema = parquet.schema_arrow
                return InputFile(path, kind, tuple(schema.names), {f.name: f.type for f in schema},
                                 parquet.metadata.num_rows)
            finally:
                parquet.close()
        with path.open(newline="", encoding="utf-8") as handle:  # the header only: rows are Arrow's to read
            names = tuple(next(csv.reader(handle), []))
        return InputFile(path, kind, names, {name: pa.string() for name in names}, None)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError, csv.Error) as exc:  # the type only: no line of the file
        raise ConfigurationError(f"cannot read '{path}' as {kind.upper()} ({type(exc).__name__}); "
                                 f"pass a well-formed {kind.upper()} file") from exc


def _rechunk(batches: Iterator[pa.RecordBatch] | pacsv.CSVStreamingReader, rows: int) -> Iterator[pa.RecordBatch]:
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - count, batch.num_rows)
            pending.append(batch.slice(0, take))
            count += take
            batch = batch.slice(take)
            if count == rows:
                yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)
                pending, count = [], 0
    if count:
        yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)


def _identifier(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind))


def _numeric(kind: pa.DataType) -> bool:
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind))


class FeatureReader:
    """Turns chunks into the float32 batch the model receives, recording every problem met on the way."""

    def __init__(self, model: ServedModel, source: InputFile, ranges: ModelRanges | None,
                 id_column: str | None, problems: Problems, subject_column: str | None = None) -> None:
        self.features = list(model.schema.features)
        self.ranges = ranges
        self.problems = problems
        for name in self.features:
            if name not in source.columns:
                problems.add(name, "missing column")
            elif source.format == "parquet" and not _numeric(source.types[name]):
                problems.add(name, f"has type {source.types[name]}, not numbers")
        if id_column is not None and id_column not in source.columns:
            problems.add(id_column, "missing id column")
        self.subject_column = subject_column
        if subject_column is not None:
            if subject_column not in source.columns:
                problems.add(subject_column, "missing subject column")
            elif source.format == "parquet" and not _identifier(source.types[subject_column]):
                problems.add(subject_column, f"has type {source.types[subject_column]}, not identifiers")
        # What a chunk is read and converted from (the rest is reported already; its rows are still checked).
        self.usable = [j for j, name in enumerate(self.features) if (name, "missing column") not in problems.found
                       and not any(c == name and p.startswith("has type") for c, p in problems.found)]
        wanted = [*([id_column] if id_column else []), *([subject_column] if subject_column else []), *self.features]
        self.columns = [c for c in dict.fromkeys(wanted) if c in source.columns]

    def batch(self, chunk: pa.RecordBatch, offset: int) -> np.ndarray:
        """The chunk's features as float32 (rows × features); problems go to :attr:`problems`.

        Rows with a problem hold NaN or their out-of-range value: a caller
        scores a chunk only if the whole file had none.
        """
        values = np.full((chunk.num_rows, len(self.features)), np.nan, dtype=np.float64)
        for j in self.usable:
            values[:, j] = self._column(chunk.column(self.features[j]), self.features[j], offset)
        batch = values.astype(np.float32)
        if self.ranges is not None:
            for j in self.ranges.bounds:  # NaN (an unusable column, a missing value) compares False
                outside = np.flatnonzero((batch[:, j] < self.ranges.low[j]) | (batch[:, j] > self.ranges.high[j]))
                low, high = self.ranges.bounds[j]
                shown = f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
                self.problems.add(self.features[j], f"outside its configured range {shown}", outside, offset)
        return batch

    def subjects(self, chunk: pa.RecordBatch, offset: int) -> pa.Array | None:
        """The chunk's subject identifiers as text (``None`` without a subject column); problems are recorded.

        An identifier follows the API's rule for ``subject_id``
        (:data:`~lifecycle.governance.objections.SUBJECT_ID_RULE`); integers
        are read as their decimal text, as a patient number typed into the API
        would be. Problems name rows, never an identifier.
        """
        name = self.subject_column
        if name is None or name not in chunk.schema.names:
            return None
        column = chunk.column(name)
        if not _identifier(column.type):
            return None  # reported once, by the constructor
        text = pc.cast(column, pa.string())
        missing = text.is_null()
        self.problems.add(name, "missing (null or empty)", np.flatnonzero(missing.to_numpy(zero_copy_only=False)),
                          offset)
        well_formed = pc.fill_null(pc.match_substring_regex(text, SUBJECT_ID_PATTERN), True)
        self.problems.add(name, f"not subject identifiers ({SUBJECT_ID_RULE})",
                          np.flatnonzero(pc.invert(well_formed).to_numpy(zero_copy_only=False)), offset)
        return text

    def _column(self, column: pa.Array, name: str, offset: int) -> np.ndarray:
        """One feature column as float64, NaN where a value is missing or not a number."""
        missing = column.is_null()
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            text = pc.utf8_trim_whitespace(column)
            number = pc.fill_null(pc.match_substring_regex(text, _NUMBER), False)
            spelled = pc.and_(pc.invert(number), pc.invert(missing))
            self.problems.add(name, "not numbers", np.flatnonzero(spelled.to_numpy(zero_copy_only=False)), offset)
            column = pc.cast(pc.if_else(number, text, pa.scalar(None, pa.string())), pa.float64())
        else:
            column = pc.cast(column, pa.float64())
        self.problems.add(name, "missing (null or empty)",
                          np.flatnonzero(missing.to_numpy(zero_copy_only=False)), offset)
        values: np.ndarray = pc.fill_null(column, np.nan).to_numpy(zero_copy_only=False)
        present = ~column.is_null().to_numpy(zero_copy_only=False)  # a NaN that was in the file is present
        bad = present & ~(np.abs(values) <= FLOAT32_MAX)
        if bad.any():
            finite = np.isfinite(values)
            self.problems.add(name, "not finite", np.flatnonzero(bad & ~finite), offset)
            self.problems.add(name, "outside the float32 range", np.flatnonzero(bad & finite), offset)
            values = np.where(bad, np.nan, values)  # reported once: not again as outside a configured range
        return values
