"""The partition as a simulation writes and shows it: site files, partition.json, the figure, the table, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from federation.tabular import load_csv, load_schema
from lifecycle.errors import ConfigurationError
from simulations.data.options import DataOptions, cli_sites, resolve_data
from simulations.data.plot import MAX_BARS, plot_partition
from simulations.data.render import print_report
from simulations.data.report import PartitionReport
from simulations.data.sites import split, write_sites
from tests.simulations.pooled import FEATURES, pooled_columns, write_pooled

ROOT = Path(__file__).resolve().parents[2]


def test_by_column_files_report_and_figure(tmp_path: Path) -> None:
    data, schema = write_pooled(tmp_path / "in")
    options = DataOptions(data=str(data), schema=str(schema), partition="by-column:hospital_id", sites=0, seed=3)
    result = write_sites(options, tmp_path / "run" / "data")
    raw = pooled_columns()
    hospitals = np.asarray(raw["hospital_id"])

    report = json.loads((tmp_path / "run" / "partition.json").read_text())
    assert report["partition"] == "by-column:hospital_id" and report["source"] == "pooled"
    assert report["labels"] == ["malignant", "benign"] and report["seed"] == 3
    assert [s["group"] for s in report["sites"]] == ["hospital_id=H1", "hospital_id=H2", "hospital_id=H3"]
    for i, site in enumerate(report["sites"]):
        rows = result.partition.sites[i]
        assert set(hospitals[rows].tolist()) == {site["group"].split("=")[1]}
        written = load_csv(tmp_path / "run" / "data" / f"site-{i}.csv", list(FEATURES), "diagnosis", 2)
        assert site["size"] == written.num_examples == len(rows)
        assert site["labels"] == {"malignant": int((written.labels == 0).sum()),
                                  "benign": int((written.labels == 1).sum())}
        np.testing.assert_array_equal(written.features, result.source.features[rows])
    summary = report["summary"]
    assert summary["sites"] == 3 and summary["records"] + summary["test_records"] == len(hospitals)
    assert summary["size_min"] == min(s["size"] for s in report["sites"]) < summary["size_max"]
    test = load_csv(tmp_path / "run" / "data" / "test.csv", list(FEATURES), "diagnosis", 2)
    assert test.num_examples == summary["test_records"] == round(0.2 * len(hospitals))
    assert load_schema(tmp_path / "run" / "data" / "schema.json").target == "diagnosis"
    svg = (tmp_path / "run" / "partition.svg").read_text()
    assert svg.startswith("<?xml") and "<svg" in svg and "hospital_id=H2" in svg
    assert (tmp_path / "run" / "partition.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert PartitionReport.load(tmp_path / "run" / "partition.json").to_dict() == report


def test_label_skew_is_zero_for_identical_mixes_and_grows_with_skew() -> None:
    iid = split(DataOptions(dataset="synthetic", records=4000, partition="iid", sites=10)).report.summary()
    skewed = split(DataOptions(dataset="synthetic", records=4000, partition="dirichlet:0.1", sites=10)).report
    assert iid["label_skew"] < 0.05 < 0.3 < skewed.summary()["label_skew"]


def test_a_thousand_sites_stay_readable(tmp_path: Path) -> None:
    result = split(DataOptions(dataset="synthetic", records=30_000, sites=1000, partition="quantity-skew:0.5"))
    path = plot_partition(result.report, tmp_path / "many.svg")
    assert path.stat().st_size > 10_000 and f"in {MAX_BARS} bins" in path.read_text()
    result.report.save(tmp_path / "partition.json")
    console = Console(record=True, width=120)
    print_report(console, str(tmp_path / "partition.json"))
    text = console.export_text()
    assert "site-9 " in text and "site-10 " not in text and "… 990 more" in text
    assert "1000 sites · 24000 training records (+6000 held out)" in text
    assert len(text.splitlines()) < 25


def test_sites_follow_the_column_or_must_match_it(tmp_path: Path) -> None:
    data, schema = write_pooled(tmp_path)
    from simulations.federation import SimulationConfig

    cfg = SimulationConfig(data=str(data), schema=str(schema), partition="by-column:hospital_id", sites=0)
    assert resolve_data(cfg).sites == 3 and resolve_data(replace(cfg, sites=3)) == replace(cfg, sites=3)
    with pytest.raises(ConfigurationError, match="gives 3 sites .* but --sites is 5: leave --sites out or pass"):
        resolve_data(replace(cfg, sites=5))
    resolve_data(cfg).validate()
    assert resolve_data(cfg).coordinator_overrides(tmp_path, tmp_path / "o.json")["model-name"] == "pooled"
    with pytest.raises(ConfigurationError, match="--records 10 sizes the generated data"):
        SimulationConfig(records=10).validate()
    assert SimulationConfig(dataset="synthetic", records=500).coordinator_overrides(
        tmp_path, tmp_path / "o.json")["model-name"] == "synthetic"
    columns = pooled_columns()
    columns["diagnosis"][0] = "maybe"
    bad, _ = write_pooled(tmp_path / "bad", ".csv", columns)
    with pytest.raises(ConfigurationError, match="pooled.csv' does not match schema"):  # before any engine starts
        resolve_data(SimulationConfig(data=str(bad), schema=str(schema), partition="iid"))
    assert cli_sites(None, "by-column:x") == 0 and cli_sites(None, "") == 5 and cli_sites(7, "by-column:x") == 7


def test_preview_command_imports_no_engine(tmp_path: Path) -> None:
    """``fedguard data partition`` runs without torch, Flower or Ray, and prints the report as JSON."""
    data, schema = write_pooled(tmp_path)
    code = ("import sys, json\n"
            "from typer.testing import CliRunner\n"
            "from fedguard.cli import app\n"
            f"r = CliRunner().invoke(app, ['data', 'partition', '--data', {str(data)!r}, '--schema', {str(schema)!r},"
            f" '--partition', 'by-column:hospital_id', '--json', '--plot', {str(tmp_path / 'p.svg')!r}])\n"
            "assert r.exit_code == 0, r.output\n"
            "heavy = [m for m in ('torch', 'flwr', 'ray') if m in sys.modules]\n"
            "print(json.dumps({'out': r.stdout, 'heavy': heavy}))\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    report = json.loads(result["out"].strip().splitlines()[-1])
    assert report["summary"]["sites"] == 3 and (tmp_path / "p.svg").stat().st_size > 1000
