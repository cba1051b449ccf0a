"""``fedguard predict``: real files, the real signed ONNX model, the real registry and audit chain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import typer
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from lifecycle.artifacts import ONNX_NAME
from lifecycle.errors import AuthError, GovernanceError, InputValidationError, SignatureError, StateError
from lifecycle.registry import Registry, VersionRecord
from lifecycle.registry.tables import AuditEvent
from serving.app import create_app
from serving.batch import cli
from serving.batch.scoring import AUDIT_ACTION, class_order, score_file, sha256_file
from serving.guards.keys import create_key
from serving.settings import OutputPolicy, ServingSettings
from tests.serving.conftest import bearer
from tests.serving.test_models import tamper

app = typer.Typer()
app.callback()(lambda: None)
app.command("predict")(cli.predict)
runner = CliRunner()
FEATURES = ["f0", "f1", "f2", "f3"]


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2, size=(n, 4)).round(4)


def table(values: np.ndarray) -> pa.Table:
    ids = [f"r{i:04d}" for i in range(len(values))]
    return pa.table({"id": ids, "extra": ["x"] * len(values),
                     **{f: values[:, j] for j, f in enumerate(FEATURES)}})


def write(path: Path, data: pa.Table) -> Path:
    if path.suffix == ".csv":
        pacsv.write_csv(data, path)
    else:
        pq.write_table(data, path, row_group_size=7)
    return path


def events(registry: Registry) -> list[AuditEvent]:
    with Session(registry.engine) as session:
        return list(session.exec(select(AuditEvent).where(AuditEvent.action == AUDIT_ACTION)
                                 .order_by(col(AuditEvent.id))).all())


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_csv_and_parquet_score_in_chunks_as_the_api_answers(
    suffix: str, registry: Registry, published: VersionRecord, tmp_path: Path
) -> None:
    values = rows(50)
    source = write(tmp_path / f"in{suffix}", table(values))
    out = tmp_path / "out" / "predictions.parquet"
    policy = OutputPolicy(output_mode="probabilities", precision=3)
    settings = ServingSettings(max_instances=64, outputs={"demo": policy})
    report = score_file(registry, "demo", source, out, settings=settings, actor="user:test", id_column="id",
                        chunk_rows=8)
    assert report.rows == 50 and report.ref == "demo:1" and report.output_mode == "probabilities"
    result = pq.read_table(out)
    assert result.column_names == ["id", "prediction", "probabilities"]
    assert result.column("id").to_pylist() == [f"r{i:04d}" for i in range(50)]
    assert class_order(out) == ["no", "yes"]
    assert list(tmp_path.joinpath("out").iterdir()) == [out]  # no partial file left
    key = create_key(registry, "predict", "tests", actor="test")
    with TestClient(create_app(registry, settings)) as client:
        answer = client.post("/v1/models/demo/predict", json={"instances": values.tolist()}, headers=bearer(key))
    assert answer.status_code == 200, answer.text
    assert result.column("prediction").to_pylist() == answer.json()["predictions"]
    assert result.column("probabilities").to_pylist() == answer.json()["probabilities"]


def test_label_and_top_k_modes_equal_the_api(registry: Registry, published: VersionRecord, tmp_path: Path) -> None:
    values = rows(20, seed=3)
    source = write(tmp_path / "in.parquet", table(values))
    key = create_key(registry, "predict", "tests", actor="test")
    for policy in (OutputPolicy(), OutputPolicy(output_mode="top-k", top_k=2, precision=2)):
        settings = ServingSettings(outputs={"demo": policy})
        out = tmp_path / f"{policy.output_mode}.parquet"
        score_file(registry, "demo:1", source, out, settings=settings, actor="user:test", chunk_rows=6)
        with TestClient(create_app(registry, settings)) as client:
            answer = client.post("/v1/models/demo/predict", json={"instances": values.tolist()},
                                 headers=bearer(key)).json()
        result = pq.read_table(out).to_pydict()
        assert result.pop("prediction") == answer["predictions"]
        assert result == ({} if policy.output_mode == "label" else {"top_k": answer["top_k"]})


def test_every_schema_problem_is_listed_at_once_and_nothing_is_written(
    registry: Registry, published: VersionRecord, tmp_path: Path
) -> None:
    source = tmp_path / "bad.csv"
    source.write_text("id,f0,f1,f3\n"
                      "a,1,2,3\n"
                      "b,abc,2,\n"
                      "c,1e400,2,3\n"
                      "d,1,x,3\n"
                      "e,500,2,3\n"
                      "f,-501,2,3\n")
    out = tmp_path / "out.parquet"
    settings = ServingSettings(feature_ranges={"demo": {"f0": (-100.0, 100.0)}})
    with pytest.raises(InputValidationError) as caught:
        score_file(registry, "demo", source, out, settings=settings, actor="user:test", id_column="key",
                   chunk_rows=2)
    message = str(caught.value)
    assert "(7 problems; rows count from 1)" in message, message
    for part in ("missing column 'f2'", "missing id column 'key'", "column 'f0': 1 value not numbers (row 2)",
                 "column 'f3': 1 value missing (null or empty) (row 2)", "column 'f0': 1 value not finite (row 3)",
                 "column 'f1': 1 value not numbers (row 4)",
                 "column 'f0': 2 values outside its configured range [-100, 100] (rows 5, 6)"):
        assert part in message, message
    assert "500" not in message and "abc" not in message  # never a value
    assert not out.exists() and list(tmp_path.glob("*.partial")) == []
    assert events(registry) == []


def test_a_file_without_rows_is_refused(registry: Registry, published: VersionRecord, tmp_path: Path) -> None:
    source = tmp_path / "empty.csv"
    source.write_text("f0,f1,f2,f3\n")
    with pytest.raises(InputValidationError, match=r"\(1 problem; rows count from 1\): the file has no rows;"):
        score_file(registry, "demo", source, tmp_path / "o.parquet", settings=ServingSettings(), actor="user:t")


def test_a_broken_csv_line_is_named_by_position_not_content(
    registry: Registry, published: VersionRecord, tmp_path: Path
) -> None:
    source = tmp_path / "broken.csv"
    source.write_text("f0,f1,f2,f3\n" + "1,2,3,4\n" * 5 + "1,2,secret-value\n")
    with pytest.raises(InputValidationError) as caught:
        score_file(registry, "demo", source, tmp_path / "o.parquet", settings=ServingSettings(), actor="user:t")
    assert "not a well-formed CSV file after row 0" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_parquet_column_types_are_checked(registry: Registry, published: VersionRecord, tmp_path: Path) -> None:
    data = table(rows(5)).set_column(2, "f0", pa.array([True, False, True, True, False]))
    data = data.set_column(3, "f1", pa.array([1.0, None, float("nan"), 2.0, 3.0]))
    source = write(tmp_path / "typed.parquet", data)
    with pytest.raises(InputValidationError) as caught:
        score_file(registry, "demo", source, tmp_path / "o.parquet", settings=ServingSettings(), actor="user:t")
    message = str(caught.value)
    for part in ("column 'f0' has type bool, not numbers", "column 'f1': 1 value missing (null or empty) (row 2)",
                 "column 'f1': 1 value not finite (row 3)"):
        assert part in message, message


def test_a_tampered_model_is_refused_before_anything_is_read(
    registry: Registry, published: VersionRecord, tmp_path: Path
) -> None:
    tamper(published.artifact.model_dir / ONNX_NAME)
    source = write(tmp_path / "in.parquet", table(rows(5)))
    with pytest.raises(SignatureError, match="refusing to serve demo:1"):
        score_file(registry, "demo", source, tmp_path / "o.parquet", settings=ServingSettings(), actor="user:t")
    assert not (tmp_path / "o.parquet").exists()


def test_a_tainted_version_is_refused(registry: Registry, published: VersionRecord, tmp_path: Path) -> None:
    from lifecycle.governance.consent import ConsentStore

    ConsentStore(registry).withdraw("site-0", scope="site", reason="test", actor="user:test")
    source = write(tmp_path / "in.parquet", table(rows(5)))
    with pytest.raises(GovernanceError, match="tainted"):
        score_file(registry, "demo", source, tmp_path / "o.parquet", settings=ServingSettings(), actor="user:t")


def test_the_audit_event_holds_digests_and_counts_never_values(
    registry: Registry, published: VersionRecord, tmp_path: Path
) -> None:
    values = rows(9)
    source = write(tmp_path / "in.csv", table(values))
    out = tmp_path / "p.parquet"
    score_file(registry, "demo", source, out, settings=ServingSettings(), actor="user:alice", id_column="id")
    [event] = events(registry)
    assert (event.actor, event.subject) == ("user:alice", "demo:1")
    details = json.loads(event.details_json)
    assert details == {"rows": 9, "input_sha256": sha256_file(source), "output_sha256": sha256_file(out),
                       "output_mode": "label", "input_format": "csv"}
    assert "r0001" not in event.details_json and str(values[0, 0]) not in event.details_json
    assert registry.verify_audit_chain() >= 1


def test_the_cli_needs_an_admin_key_for_raw_outputs(
    registry: Registry, published: VersionRecord, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDGUARD_ADMIN_KEY", raising=False)
    source = write(tmp_path / "in.parquet", table(rows(12)))
    out = tmp_path / "raw.parquet"
    args = ["predict", "demo", "--input", str(source), "--output", str(out), "--raw-outputs", "-q"]
    result = runner.invoke(app, args)
    assert isinstance(result.exception, AuthError) and "admin-scoped" in str(result.exception)
    predict_key = create_key(registry, "predict", "tests", actor="test").key
    assert isinstance(runner.invoke(app, [*args, "--admin-key", predict_key]).exception, AuthError)
    admin = create_key(registry, "admin", "ops", actor="test")
    monkeypatch.setenv("FEDGUARD_ADMIN_KEY", admin.key)
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert "--raw-outputs writes every class's probability" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows"] == 12 and summary["output_mode"] == "raw"
    probabilities = pq.read_table(out).column("probabilities").to_pylist()
    assert any(len(repr(p)) > 6 for row in probabilities for p in row)  # not rounded
    assert json.loads(events(registry)[-1].details_json)["admin_key_id"] == admin.info.key_id


class _ChangeInputWhenScoringStarts:
    """A progress hook that rewrites the input as the scoring pass begins (another writer, at the worst time)."""

    def __init__(self, source: Path, data: pa.Table) -> None:
        self.source, self.data = source, data

    def phase(self, name: str, total: int | None) -> None:
        if name == "scoring":
            write(self.source, self.data)

    def advance(self, rows: int) -> None:
        """Nothing to do."""


def test_a_failure_while_scoring_leaves_no_output_and_no_event(
    registry: Registry, published: VersionRecord, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    source = write(work / "in.parquet", table(rows(30)))
    out = work / "p.parquet"
    out.write_bytes(b"an older output")
    hook = _ChangeInputWhenScoringStarts(source, table(rows(30, seed=9)))
    with pytest.raises(StateError, match="changed while it was scored"):
        score_file(registry, "demo", source, out, settings=ServingSettings(), actor="user:t", chunk_rows=8,
                   progress=hook)
    assert out.read_bytes() == b"an older output"
    assert sorted(p.name for p in work.iterdir()) == ["in.parquet", "p.parquet"]
    assert events(registry) == []


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_objecting_subjects_rows_are_left_unscored_and_counted(
    suffix: str, registry: Registry, published: VersionRecord, tmp_path: Path
) -> None:
    from lifecycle.governance.objections import ObjectionStore

    values = rows(30, seed=5)
    data = table(values).append_column("patient", pa.array([f"P-{i:03d}" for i in range(30)]))
    source = write(tmp_path / f"in{suffix}", data)
    settings = ServingSettings(outputs={"demo": OutputPolicy(output_mode="top-k", top_k=1, precision=2)})
    unlisted = tmp_path / "before.parquet"
    before = score_file(registry, "demo", source, unlisted, settings=settings, actor="user:t",
                        subject_column="patient", chunk_rows=7)
    assert before.objected == 0 and pq.read_table(unlisted).column("objected").to_pylist() == [False] * 30
    ObjectionStore(registry).add("demo", "default", ["P-003", "P-017", "P-018"], reason="art. 21", actor="user:t")

    with pytest.raises(GovernanceError, match=r"3 data subject\(s\) objected to demo.*--subject-column"):
        score_file(registry, "demo", source, tmp_path / "none.parquet", settings=settings, actor="user:t")
    assert not (tmp_path / "none.parquet").exists()

    out = tmp_path / "p.parquet"
    report = score_file(registry, "demo", source, out, settings=settings, actor="user:t", id_column="id",
                        subject_column="patient", chunk_rows=7)
    assert report.objected == 3
    result = pq.read_table(out).to_pydict()
    assert "patient" not in result  # identifiers stay in the input
    refused = {3, 17, 18}
    assert result["objected"] == [i in refused for i in range(30)]
    expected = pq.read_table(unlisted).to_pydict()
    for name in ("prediction", "top_k"):
        assert result[name] == [None if i in refused else v for i, v in enumerate(expected[name])]
    details = json.loads(events(registry)[-1].details_json)
    assert (details["objected"], details["subject_column"], details["environment"]) == (3, "patient", "default")
    assert "P-0" not in events(registry)[-1].details_json
    # Another environment's list does not apply; a whole chunk of objecting subjects is written empty.
    other = score_file(registry, "demo", source, tmp_path / "o.parquet", settings=settings, actor="user:t",
                       subject_column="patient", environment="staging")
    assert other.objected == 0
    ObjectionStore(registry).add("demo", "default", [f"P-{i:03d}" for i in range(14, 21)], reason="r", actor="u")
    score_file(registry, "demo", source, tmp_path / "w.parquet", settings=settings, actor="user:t",
               subject_column="patient", chunk_rows=7)
    whole = pq.read_table(tmp_path / "w.parquet").to_pydict()
    assert whole["prediction"][14:21] == [None] * 7 and whole["objected"].count(True) == 8


def test_a_bad_subject_column_is_listed_with_the_other_problems(
    registry: Registry, published: VersionRecord, tmp_path: Path
) -> None:
    values = rows(6)
    subjects = pa.array(["ok-1", None, "Q9Z\tK7W", "ok-4", "x" * 200, "ok-6"])
    source = write(tmp_path / "in.parquet", table(values).append_column("patient", subjects))
    with pytest.raises(InputValidationError) as caught:
        score_file(registry, "demo", source, tmp_path / "o.parquet", settings=ServingSettings(), actor="user:t",
                   subject_column="patient")
    message = str(caught.value)
    assert "column 'patient': 1 value missing (null or empty) (row 2)" in message
    assert "column 'patient': 2 values not subject identifiers" in message and "(rows 3, 5)" in message
    assert "Q9Z" not in message
    with pytest.raises(InputValidationError, match="missing subject column 'nobody'"):
        score_file(registry, "demo", source, tmp_path / "o.parquet", settings=ServingSettings(), actor="user:t",
                   subject_column="nobody")
