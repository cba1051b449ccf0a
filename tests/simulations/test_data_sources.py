"""Where a simulation's records come from: the researcher's file under its schema, synthetic data, bundled sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from federation.schema import SchemaValidationError
from lifecycle.errors import ConfigurationError
from simulations.data.options import DataOptions
from simulations.data.sources import load_source, synthetic
from tests.simulations.pooled import FEATURES, SCHEMA, pooled_columns, write_pooled


def test_csv_and_parquet_give_the_same_records(tmp_path: Path) -> None:
    csv_data, schema = write_pooled(tmp_path / "csv", ".csv")
    pq_data, _ = write_pooled(tmp_path / "pq", ".parquet")
    from_csv = load_source(DataOptions(data=str(csv_data), schema=str(schema)))
    from_pq = load_source(DataOptions(data=str(pq_data), schema=str(schema)))
    raw = pooled_columns()
    assert from_csv.feature_names == FEATURES and from_csv.label_names == ("malignant", "benign")
    assert from_csv.target == "diagnosis" and from_csv.name == "pooled"
    np.testing.assert_allclose(from_csv.features[:, 0], np.asarray(raw["mean radius"], dtype=np.float32))
    assert from_csv.labels.tolist() == [0 if d == "malignant" else 1 for d in raw["diagnosis"]]
    np.testing.assert_array_equal(from_csv.features, from_pq.features)
    np.testing.assert_array_equal(from_csv.labels, from_pq.labels)
    # the undeclared silo column is there to split by, never as a feature; the id column likewise
    assert from_csv.column("hospital_id").tolist() == raw["hospital_id"] == from_pq.column("hospital_id").tolist()
    assert set(from_csv.columns) == {"hospital_id", "patient_id"}
    with pytest.raises(ConfigurationError, match="no column 'ward'.*hospital_id"):
        from_csv.column("ward")


def test_a_bad_file_is_refused_in_one_line_naming_every_problem(tmp_path: Path) -> None:
    columns = pooled_columns()
    del columns["mean smoothness"]
    columns["mean radius"][3] = "abc"
    columns["mean area"][7] = -1.0
    columns["diagnosis"][9] = "unsure"
    data, schema = write_pooled(tmp_path, ".csv", columns)
    with pytest.raises(SchemaValidationError) as caught:
        load_source(DataOptions(data=str(data), schema=str(schema)))
    message = str(caught.value)
    assert "\n" not in message and "4 problem(s)" in message
    for expected in ("column 'mean smoothness': is declared in the schema but absent",
                     "column 'mean radius': 1 row(s) not a finite number (rows 4)",
                     "column 'mean area': 1 row(s) below min 0 px (rows 8)",
                     "column 'diagnosis': 1 row(s) with a label not among the 2 label-values (rows 10)"):
        assert expected in message
    assert "abc" not in message and "unsure" not in message  # problems name columns and rows, never values


def test_json_schema_works_and_a_contract_mapping_is_refused(tmp_path: Path) -> None:
    data, _ = write_pooled(tmp_path)
    as_json = tmp_path / "schema.json"
    as_json.write_text(json.dumps({
        "label": "diagnosis", "label-values": ["malignant", "benign"], "extra-columns": "ignore",
        "columns": {name: {"type": "float"} for name in FEATURES[:3]},
    }))
    source = load_source(DataOptions(data=str(data), schema=str(as_json)))
    assert source.feature_names == FEATURES[:3] and source.features.shape == (569, 3)
    mapping = tmp_path / "mapping.toml"
    mapping.write_text('[rename]\n"Radius" = "radius_mean"\n')
    with pytest.raises(ConfigurationError, match="needs the full site schema"):
        load_source(DataOptions(data=str(data), schema=str(mapping)))
    broken = tmp_path / "broken.toml"
    broken.write_text(SCHEMA.replace('type = "float", min = 0 }', 'type = "decimal" }', 1))
    with pytest.raises(ConfigurationError, match="'mean radius' needs type = one of"):
        load_source(DataOptions(data=str(data), schema=str(broken)))
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_source(DataOptions(data=str(tmp_path / "none.csv"), schema=str(as_json)))


def test_synthetic_is_seeded_and_sized() -> None:
    first = synthetic(500, 8, classes=3, seed=1)
    assert first.features.shape == (500, 8) and first.features.dtype == np.float32
    assert set(first.labels.tolist()) == {0, 1, 2} and first.label_names == ("0", "1", "2")
    np.testing.assert_array_equal(first.features, synthetic(500, 8, classes=3, seed=1).features)
    assert not np.array_equal(first.features, synthetic(500, 8, classes=3, seed=2).features)
    default = load_source(DataOptions(dataset="synthetic:4", records=300, seed=5))
    assert default.features.shape == (300, 20) and len(default.label_names) == 4
    with pytest.raises(ConfigurationError, match="too few for 16 classes"):
        synthetic(100, 2, classes=16, seed=0)


def test_bundled_sets_keep_working() -> None:
    digits = load_source(DataOptions(dataset="digits"))
    assert digits.features.shape == (1797, 64) and len(digits.label_names) == 10


@pytest.mark.parametrize(("options", "message"), [
    (DataOptions(data="x.csv"), "--data x.csv needs --schema"),
    (DataOptions(schema="s.toml"), "pass --data FILE too"),
    (DataOptions(data="x.csv", schema="s.toml", dataset="wine"), "both name the records"),
    (DataOptions(dataset="mnist"), "unknown; choose one of breast-cancer, digits, wine, synthetic"),
    (DataOptions(records=1000), "--records 1000 sizes the generated data: it needs --dataset synthetic"),
    (DataOptions(dataset="synthetic", features=-1), "--features -1: must be positive"),
    (DataOptions(partition="iid", alpha=0.1), "put the parameter in the spec"),
    (DataOptions(partition="dirichlet"), "needs a parameter"),
    (DataOptions(sites=0), "0 means one site per value only with --partition by-column"),
])
def test_contradictory_flags_are_refused_by_name(options: DataOptions, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        options.check()

