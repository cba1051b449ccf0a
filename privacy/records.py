"""Typed lookups of one record in a Flower ``RecordDict``, without the copies its properties build.

``RecordDict.config_records`` (and ``metric_records``, ``array_records``) builds a
new type-checked dictionary of every record of that kind at each access, so
``msg.content.config_records.get("config")`` copies and checks all of a message's
config records to read one. A site's train message passes through half a dozen
mods that each read a record or two, and a simulation sends thousands of them:
these helpers read the one entry and check its type.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

_R = TypeVar("_R", ArrayRecord, ConfigRecord, MetricRecord)


def _record(content: Mapping[str, Any], key: str, kind: type[_R]) -> _R | None:
    record = content.get(key)
    return record if isinstance(record, kind) else None


def config_record(content: Mapping[str, Any], key: str) -> ConfigRecord | None:
    """``content.config_records.get(key)``."""
    return _record(content, key, ConfigRecord)


def metric_record(content: Mapping[str, Any], key: str) -> MetricRecord | None:
    """``content.metric_records.get(key)``."""
    return _record(content, key, MetricRecord)


def array_record(content: Mapping[str, Any], key: str) -> ArrayRecord | None:
    """``content.array_records.get(key)``."""
    return _record(content, key, ArrayRecord)


def required_config(content: Mapping[str, Any], key: str) -> ConfigRecord:
    """``content.config_records[key]`` (KeyError when there is no such config record)."""
    record = config_record(content, key)
    if record is None:
        raise KeyError(key)
    return record


def required_arrays(content: Mapping[str, Any], key: str) -> ArrayRecord:
    """``content.array_records[key]`` (KeyError when there is no such array record)."""
    record = array_record(content, key)
    if record is None:
        raise KeyError(key)
    return record


def metric_items(content: Mapping[str, Any]) -> Iterator[tuple[str, MetricRecord]]:
    """``content.metric_records.items()``, in the content's order."""
    for key, record in content.items():
        if isinstance(record, MetricRecord):
            yield key, record
