"""Typed record lookups (privacy.records) answer exactly what Flower's filtered properties answer."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from privacy import records


def _content() -> RecordDict:
    return RecordDict({
        "config": ConfigRecord({"server-round": 3}),
        "metrics": MetricRecord({"num-examples": 10}),
        "arrays": ArrayRecord({"w": Array(np.zeros(3, np.float32))}),
        "more": MetricRecord({"loss": 0.5}),
    })


@pytest.mark.parametrize("key", ["config", "metrics", "arrays", "more", "absent"])
def test_lookups_match_flowers_properties(key: str) -> None:
    content = _content()
    assert records.config_record(content, key) is content.config_records.get(key)
    assert records.metric_record(content, key) is content.metric_records.get(key)
    assert records.array_record(content, key) is content.array_records.get(key)


def test_required_lookups_raise_key_error_like_flowers() -> None:
    content = _content()
    assert records.required_config(content, "config") is content.config_records["config"]
    assert records.required_arrays(content, "arrays") is content.array_records["arrays"]
    with pytest.raises(KeyError):
        records.required_config(content, "metrics")  # a record of another kind under that key
    with pytest.raises(KeyError):
        records.required_arrays(content, "absent")


def test_metric_items_in_order() -> None:
    content = _content()
    assert list(records.metric_items(content)) == list(content.metric_records.items())
