"""The site's own data file (CSV or Parquet): read, check against the site's schema, encode for training.

A deployed site points its node config at its file (``data-path``) and at
its schema (``schema-path``): a full site schema (:mod:`federation.schema`) or
a mapping of its export onto the federation's data contract, which arrives
with the run (:mod:`federation.mapping`, the same check as ``fedguard client
check --bundle``); a simulated site reads
``<data-dir>/site-<partition>.csv`` and accepts what the implicit schema
accepts (finite numeric features, labels 0..k-1). Either way the file is
checked *completely* before anything is trained, and a bad file fails the
message with a generic reason for the coordinator while the site's log gets
every problem (:func:`site_data_mod`).

The records never leave this process: what leaves is the manifest (SHA-256 of
the file) and the row count (``federation.tabular``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from client import logger
from federation.contract import DataContract
from federation.mapping import SiteMapping, check_site_table
from federation.schema import CheckedTable, SchemaValidationError, SiteSchema, encode
from federation.tabular import CSV_SUFFIXES, PARQUET_SUFFIXES, RawTable, TabularData, file_manifest, read_table
from lifecycle.errors import ConfigurationError

__all__ = ["CSV_SUFFIXES", "PARQUET_SUFFIXES", "PUBLIC_REASON", "RawTable", "check_file", "encode", "load_site_data",
           "read_table", "site_data_mod"]
PUBLIC_REASON = "the site's data failed validation against its schema; nothing was trained (details in the site's log)"


def check_file(path: Path, schema: SiteSchema | SiteMapping, contract: DataContract | None = None) -> CheckedTable:
    """Read ``path`` and check every cell against ``schema`` (through ``contract`` for a mapping; nothing raised)."""
    return _check(path, schema, contract)[0]


def _check(path: Path, schema: SiteSchema | SiteMapping,
           contract: DataContract | None) -> tuple[CheckedTable, SiteSchema]:
    table = read_table(path)
    return check_site_table(table.header, table.cells, table.num_rows, str(path), schema, contract)


def load_site_data(path: Path, schema: SiteSchema | SiteMapping, features: Sequence[str], target: str,
                   num_classes: int, labels: Sequence[str] = (), contract: DataContract | None = None) -> TabularData:
    """The validated, encoded site data (cached per file version within the process).

    The one path from a site's file to model input, for ``fedguard client
    check --bundle`` and training alike: ``schema`` checked (through the
    federation's ``contract`` when it is a mapping), then :func:`encode`.

    Raises
    ------
    SchemaValidationError
        The file does not match the schema; its report lists every problem.
    ConfigurationError
        The file is missing or unreadable, or the schema does not fit the federation's model.
    """
    try:
        stat = path.stat()
    except OSError:
        raise ConfigurationError(f"data file '{path}' does not exist; set node config data-path to your file") from None
    return _load(path.resolve(), (stat.st_mtime_ns, stat.st_size), schema, tuple(features), target, num_classes,
                 tuple(labels), contract)


@functools.lru_cache(maxsize=8)
def _load(path: Path, stamp: tuple[int, int], schema: SiteSchema | SiteMapping, features: tuple[str, ...],
          target: str, num_classes: int, labels: tuple[str, ...], contract: DataContract | None) -> TabularData:
    del stamp  # part of the cache key: an edited file is read again
    checked, effective = _check(path, schema, contract)
    checked.report.raise_if_invalid()
    x, y = encode(checked, effective, features, target, num_classes, labels)
    logger.info("site data '%s': %d rows match schema %s", path, checked.report.rows, schema.source)
    return TabularData(x, y, file_manifest(path), path)


def site_data_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Turn a bad data file into an error reply: generic for the coordinator, every problem in the site's log."""
    try:
        return call_next(msg, context)
    except SchemaValidationError as exc:
        logger.error("site data failed validation; nothing was trained or sent:\n%s", exc)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=PUBLIC_REASON), reply_to=msg)
