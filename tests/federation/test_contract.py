"""The federation's data contract and a site's mapping onto it: one check, every mismatch at once."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from client.data import check_file, load_site_data
from federation.bundle import SiteBundle, read_bundle, write_bundle
from federation.contract import DataContract
from federation.mapping import SiteMapping, load_site_schema
from federation.protocol import TrainConfig
from federation.schema import SchemaValidationError, SiteSchema, encode
from federation.tabular import read_table
from lifecycle.architecture import ModelSpec
from lifecycle.errors import ConfigurationError
from tests.federation import hospital

RENAMED = {"radius_mean": "Radius (mean)", "texture_mean": "TEXTURE_MEAN"}


@pytest.fixture
def contract(tmp_path: Path) -> DataContract:
    path = tmp_path / "contract.toml"
    path.write_text(hospital.contract_toml(6))
    return DataContract.load(path)


def _mapping(tmp_path: Path, text: str) -> SiteMapping:
    path = tmp_path / "site.toml"
    path.write_text(text)
    schema = load_site_schema(path)
    assert isinstance(schema, SiteMapping)
    return schema


def test_contract_round_trips_through_json_with_a_stable_digest(contract: DataContract, tmp_path: Path) -> None:
    again = DataContract.from_json(contract.to_json())
    assert again == contract and again.digest == contract.digest and len(contract.digest) == 64
    assert contract.features == hospital.features(6) and contract.record_id == "patient_id"
    assert contract.columns[0].unit == "mm" and contract.columns[1].unit is None
    assert DataContract.read(contract.write(tmp_path / "c.json")) == contract
    schema = contract.data_schema()
    assert (schema.features, schema.target, schema.labels) == (contract.features, "diagnosis", ("malignant", "benign"))
    changed = replace(contract, label_values=("benign", "malignant"))
    assert changed.digest != contract.digest  # the class order is part of the contract


def test_contract_refuses_a_record_id_that_is_a_feature(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(hospital.contract_toml(3).replace('record-id = "patient_id"', 'record-id = "radius_mean"'))
    with pytest.raises(ConfigurationError, match="record-id 'radius_mean'"):
        DataContract.load(path)


def test_a_hospital_export_maps_onto_the_contract_and_encodes_like_the_coordinator(
        tmp_path: Path, contract: DataContract) -> None:
    held, (rows,) = hospital.split(1)
    export = hospital.write_export(tmp_path / "export.csv", rows[:40], count=6, rename=RENAMED,
                                   extra={"admission_date": "2026-01-02"})
    mapping = _mapping(tmp_path, hospital.mapping_toml(rename=RENAMED, ignore=["patient_id", "admission_date"]))
    checked = check_file(export, mapping, contract)
    assert checked.report.ok, checked.report.summary()
    data = load_site_data(export, mapping, contract.features, contract.label, 2, contract.label_values, contract)
    # the same rows in the contract's own names, checked and encoded as the coordinator does
    plain = hospital.write_heldout(tmp_path / "plain.csv", rows[:40], count=6)
    table = read_table(plain)
    reference = contract.check(table.header, table.cells, table.num_rows, str(plain))
    x, y = encode(reference, contract.site_schema(), contract.features, contract.label, 2, contract.label_values)
    np.testing.assert_array_equal(data.features, x)
    np.testing.assert_array_equal(data.labels, y)
    _, labels, _ = hospital.breast_cancer()
    assert data.labels.tolist() == labels[rows[:40]].tolist()  # M → malignant → class 0


def test_every_mismatch_is_reported_at_once_in_the_sites_terms(tmp_path: Path, contract: DataContract) -> None:
    _, (rows,) = hospital.split(1)
    export = hospital.write_export(tmp_path / "export.csv", rows[:20], count=6, extra={"ward": "3"},
                                   rename={"radius_mean": "rad", "perimeter_mean": "perimeter"})
    lines = export.read_text().splitlines()
    header = lines[0].split(",")
    dropped = header.index("area_mean")
    cells = [line.split(",") for line in lines]
    for row in cells:
        del row[dropped]                      # a contract column the file lacks
    cells[2][header.index("texture_mean")] = "thick"  # row 2: not a number
    cells[4][1] = "-3"                        # row 4: radius below min 0 (renamed column 'rad')
    cells[5][cells[0].index("diagnosis")] = "X"  # row 5: a label value nobody maps
    cells[6][0] = cells[1][0]                 # row 6: repeats row 1's record id
    export.write_text("\n".join(",".join(row) for row in cells) + "\n")
    mapping = _mapping(tmp_path, hospital.mapping_toml(
        rename={"radius_mean": "rad", "perimeter_mean": "perim"}, ignore=[]) + '"U" = "unknown"\n')
    report = check_file(export, mapping, contract).report
    found = {(p.column, p.kind): p for p in report.problems}
    assert set(found) == {
        ("ward", "extra-column"), ("perimeter", "extra-column"), ("area_mean", "missing-column"),
        ("perimeter_mean", "missing-column"),
        ("texture_mean", "type"), ("rad", "below-min"), ("diagnosis", "unknown-label"),
        ("patient_id", "duplicate-id"), ("diagnosis", "unknown-label-target"),
    }, report.summary()
    assert "site column 'perim'" in found[("perimeter_mean", "missing-column")].detail
    assert "contract column 'radius_mean'" in found[("rad", "below-min")].detail
    assert "mm" in found[("rad", "below-min")].detail
    assert found[("diagnosis", "unknown-label")].rows == (5,)
    assert report.bad_rows == 4 and "federation's data contract" in report.summary()
    assert "--bundle" in report.summary()
    assert "thick" not in report.summary()  # columns and rows, never values
    with pytest.raises(SchemaValidationError):
        load_site_data(export, mapping, contract.features, contract.label, 2, contract.label_values, contract)


def test_a_full_site_schema_is_checked_for_fit_with_the_contract(tmp_path: Path, contract: DataContract) -> None:
    path = tmp_path / "full.toml"
    path.write_text('label = "outcome"\nlabel-values = ["0", "1"]\n\n[columns]\nradius_mean = { type = "float" }\n')
    schema = load_site_schema(path)
    assert isinstance(schema, SiteSchema)
    data = tmp_path / "d.csv"
    data.write_text("radius_mean,outcome\n1.5,0\n2.5,1\n")
    assert check_file(data, schema).report.ok  # alone: today's behaviour
    report = check_file(data, schema, contract).report
    kinds = {(p.column, p.kind) for p in report.problems}
    assert ("texture_mean", "missing-column") in kinds and ("outcome", "label") in kinds
    assert ("outcome", "label-values") in kinds


def test_a_mapping_needs_a_contract_and_cannot_be_mixed_with_columns(tmp_path: Path) -> None:
    mapping = _mapping(tmp_path, hospital.mapping_toml())
    data = hospital.write_export(tmp_path / "d.csv", [0, 1], count=3)
    with pytest.raises(ConfigurationError, match="--bundle"):
        check_file(data, mapping)
    mixed = tmp_path / "mixed.toml"
    mixed.write_text('ignore = ["x"]\nlabel = "y"\nlabel-values = [0, 1]\n[columns]\na = { type = "int" }\n')
    with pytest.raises(ConfigurationError, match="keep one"):
        load_site_schema(mixed)
    stray = tmp_path / "stray.toml"
    stray.write_text('label = "y"\n')
    with pytest.raises(ConfigurationError, match="without \\[columns\\]"):
        load_site_schema(stray)


def test_the_run_carries_the_contract(contract: DataContract) -> None:
    cfg = TrainConfig(server_round=1, total_rounds=2, local_epochs=1, batch_size=8, lr=0.1, dp_epsilon=0.0,
                      dp_delta=1e-5, max_grad_norm=1.0, features=contract.features, target=contract.label,
                      spec=ModelSpec(6, 2, (8,)), seed=1, labels=contract.label_values, contract=contract.to_json())
    again = TrainConfig.from_record(cfg.to_record())
    assert DataContract.from_json(again.contract) == contract
    assert TrainConfig.from_record(replace(cfg, contract="").to_record()).contract == ""


def test_bundle_round_trips_with_and_without_a_contract(tmp_path: Path, contract: DataContract) -> None:
    bundle = SiteBundle("cardio", "guys", "fl.example:9443", "ca", "cert", "pub", "2026-12-01T00:00:00+00:00",
                        site_key="key", node_key="node", contract=contract.to_json())
    assert "contract" not in repr(bundle)
    again = read_bundle(write_bundle(tmp_path / "b.bundle", bundle))
    assert again == bundle and DataContract.from_json(again.contract).digest == contract.digest
    old = tmp_path / "old.bundle"  # a bundle written before contracts existed
    raw = json.loads((tmp_path / "b.bundle").read_text())
    del raw["contract"]
    old.write_text(json.dumps(raw))
    os.chmod(old, 0o600)
    assert read_bundle(old).contract == ""
    raw["contract"] = 7
    old.write_text(json.dumps(raw))
    with pytest.raises(ConfigurationError, match="lacks contract"):
        read_bundle(old)


def test_the_site_agent_trains_through_the_mapping_and_the_runs_contract(tmp_path: Path,
                                                                         contract: DataContract) -> None:
    from client.app import _site_data
    from client.config import SiteIdentity

    _, (rows,) = hospital.split(1)
    export = hospital.write_export(tmp_path / "export.csv", rows[:30], count=6, rename=RENAMED)
    (tmp_path / "site.toml").write_text(hospital.mapping_toml(rename=RENAMED))
    site = SiteIdentity("guys", export, tmp_path / "site.toml")
    cfg = TrainConfig(server_round=1, total_rounds=1, local_epochs=1, batch_size=8, lr=0.1, dp_epsilon=0.0,
                      dp_delta=1e-5, max_grad_norm=1.0, features=contract.features, target=contract.label,
                      spec=ModelSpec(6, 2, (8,)), seed=1, labels=contract.label_values, contract=contract.to_json())
    data = _site_data(site, cfg)
    expected = check_file(export, load_site_schema(tmp_path / "site.toml"), contract)
    assert expected.report.ok and data.num_examples == 30
    np.testing.assert_array_equal(data.features[:, 0], expected.values["radius_mean"].astype(np.float32))
    with pytest.raises(ConfigurationError, match="no contract"):
        _site_data(site, replace(cfg, contract=""))  # a run without a contract cannot check a mapping
