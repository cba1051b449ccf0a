"""``fedguard coordinator data``, bundles that carry the contract, ``fedguard client check --bundle``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from client.cli import client_app
from coordinator.app import _contract, _train_config, reference_folder
from coordinator.cli import coordinator_app, site_app
from coordinator.config import CoordinatorConfig
from coordinator.provisioning import FederationLayout, init_federation
from federation.bundle import read_bundle
from federation.contract import DataContract
from federation.protocol import TrainConfig
from federation.tabular import load_csv, load_schema
from lifecycle.errors import ConfigurationError
from tests.federation import hospital

RENAMED = {"radius_mean": "Radius (mean)"}
runner = CliRunner()


@pytest.fixture
def layout(fedguard_home: Path) -> FederationLayout:
    return init_federation(fedguard_home, "cardio", hosts=("coord.example",))


def _invoke(app: object, *args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])  # type: ignore[arg-type]


def _declare(tmp_path: Path, count: int = 8, *args: str) -> Result:
    (tmp_path / "contract.toml").write_text(hospital.contract_toml(count))
    held, _ = hospital.split(3)
    hospital.write_heldout(tmp_path / "heldout.csv", held, count=count)
    return _invoke(coordinator_app, "data", "--data", tmp_path / "heldout.csv", "--schema",
                   tmp_path / "contract.toml", *args)


def test_coordinator_data_refuses_a_bad_file_listing_every_problem(layout: FederationLayout, tmp_path: Path) -> None:
    (tmp_path / "contract.toml").write_text(hospital.contract_toml(4))
    export = hospital.write_export(tmp_path / "heldout.csv", range(30), count=4, extra={"ward": "3"})  # M/B codes
    result = _invoke(coordinator_app, "data", "--data", export, "--schema", tmp_path / "contract.toml", "--json")
    assert result.exit_code == 2, result.output
    report = json.loads(result.stdout)
    assert {(p["column"], p["kind"]) for p in report["problems"]} == {("ward", "extra-column"),
                                                                     ("diagnosis", "unknown-label")}
    assert not layout.contract.exists() and not layout.reference.exists()  # nothing declared


def test_coordinator_data_writes_the_contract_and_the_reference_set(layout: FederationLayout, tmp_path: Path) -> None:
    result = _declare(tmp_path, 8, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    contract = DataContract.read(layout.contract)
    assert out["digest"] == contract.digest and out["rows"] == len(hospital.split(3)[0]) and not out["changed"]
    schema = load_schema(layout.reference / "schema.json")
    assert schema == contract.data_schema() and DataContract.read(layout.reference / "contract.json") == contract
    test = load_csv(layout.reference / "test.csv", list(schema.features), schema.target, 2)
    _, labels, _ = hospital.breast_cancer()
    assert test.labels.tolist() == labels[hospital.split(3)[0]].tolist()
    # a deployed job (run-id set) with an empty data-dir evaluates on it, and every message carries the contract
    cfg = CoordinatorConfig.from_mapping({"run-id": "abc123", "num-sites": 3})
    folder = reference_folder(cfg)
    assert folder == layout.reference
    sent = TrainConfig.from_record(_train_config(cfg, schema, _contract(folder, schema)))
    assert DataContract.from_json(sent.contract) == contract and sent.features == contract.features
    with pytest.raises(ConfigurationError, match="data-dir"):
        reference_folder(CoordinatorConfig.from_mapping({"num-sites": 3}))  # simulation: data-dir stays required

    human = _declare(tmp_path, 6)  # a changed contract says what happens to existing bundles
    assert human.exit_code == 0 and "digest" in human.output and "next:" in human.output


def test_bundles_carry_the_contract_and_client_check_uses_it(layout: FederationLayout, tmp_path: Path) -> None:
    early = _invoke(site_app, "enroll", "guys", "--out", tmp_path / "guys.bundle")
    assert early.exit_code == 0 and "no data contract yet" in early.output
    refused = _invoke(client_app, "check", "--bundle", tmp_path / "guys.bundle", "--data", tmp_path / "x.csv",
                      "--schema", tmp_path / "x.toml")
    assert isinstance(refused.exception, ConfigurationError) and "site rotate guys" in str(refused.exception)

    assert _declare(tmp_path).exit_code == 0
    result = _invoke(site_app, "enroll", "st-marys", "--out", tmp_path / "st-marys.bundle", "--json")
    assert result.exit_code == 0, result.output
    contract = DataContract.read(layout.contract)
    assert json.loads(result.stdout)["contract"] == contract.digest
    assert DataContract.from_json(read_bundle(tmp_path / "st-marys.bundle").contract) == contract
    rotated = _invoke(site_app, "rotate", "guys", "--out", tmp_path / "guys2.bundle")
    assert rotated.exit_code == 0 and "carries the data contract" in rotated.output

    _, parts = hospital.split(3)
    export = hospital.write_export(tmp_path / "export.csv", parts[0], count=8, rename=RENAMED)
    (tmp_path / "site.toml").write_text(hospital.mapping_toml(rename=RENAMED))
    check = ("check", "--bundle", tmp_path / "st-marys.bundle", "--data", export, "--schema", tmp_path / "site.toml")
    ok = _invoke(client_app, *check)
    assert ok.exit_code == 0 and "ok" in ok.output and contract.digest[:16] in ok.output, ok.output

    (tmp_path / "site.toml").write_text(hospital.mapping_toml(rename=RENAMED, codes={"malignant": "M"}))
    bad = _invoke(client_app, *check, "--json")
    assert bad.exit_code == 2
    report = json.loads(bad.stdout)
    assert report["contract"] == contract.digest
    assert [(p["column"], p["kind"]) for p in report["problems"]] == [("diagnosis", "unknown-label")]
    human = _invoke(client_app, *check)
    assert human.exit_code == 2 and "not recoded by [label-map]" in human.output  # brackets are text, not markup
    without = _invoke(client_app, "check", "--data", export, "--schema", tmp_path / "site.toml")
    assert isinstance(without.exception, ConfigurationError) and "--bundle" in str(without.exception)
