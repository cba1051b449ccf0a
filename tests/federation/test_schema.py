"""The site's schema file and data check: every problem reported at once, CSV and Parquet alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from client.data import check_file, load_site_data, read_table
from federation.schema import SchemaValidationError, SiteSchema
from lifecycle.errors import ConfigurationError, InputValidationError

SCHEMA = """
label = "diagnosis"
label-values = ["benign", "malignant"]

[columns]
age = { type = "int", min = 18, max = 110 }
bmi = { type = "float", min = 10.0, max = 80.0, missing = true }
sex = { type = "category", values = ["F", "M"] }
smoker = { type = "bool" }
"""

GOOD = """age,bmi,sex,smoker,diagnosis
34,22.5,F,true,benign
61,,M,0,malignant
47,31.0,M,no,benign
"""


@pytest.fixture
def schema(tmp_path: Path) -> SiteSchema:
    path = tmp_path / "schema.toml"
    path.write_text(SCHEMA)
    return SiteSchema.load(path)


def test_a_good_file_encodes_in_the_federations_order(tmp_path: Path, schema: SiteSchema) -> None:
    path = tmp_path / "site.csv"
    path.write_text(GOOD)
    data = load_site_data(path, schema, ["smoker", "age", "bmi", "sex"], "diagnosis", 2, ["malignant", "benign"])
    assert data.features.tolist() == [[1, 34, 22.5, 0], [0, 61, 26.75, 1], [0, 47, 31.0, 1]]  # bmi imputed locally
    assert data.labels.tolist() == [1, 0, 1]  # by name: the coordinator's class order wins
    assert data.num_examples == 3 and len(data.manifest) == 64


def test_every_problem_is_reported_at_once_with_counts_and_rows(tmp_path: Path, schema: SiteSchema) -> None:
    path = tmp_path / "bad.csv"
    rows = ["age,sex,smoker,diagnosis,notes"]
    rows += [f"{30 + i},F,yes,benign,x" for i in range(10)]
    rows[3] = "17,F,yes,benign,x"            # row 3: below min
    rows[5] = "44.5,X,maybe,unknown,x"       # row 5: type, not-allowed, type, unknown label
    rows[8] = "200,,yes,,x"                  # row 8: above max, missing sex, missing label
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(SchemaValidationError) as raised:
        load_site_data(path, schema, schema.features, "diagnosis", 2)
    report = raised.value.report
    kinds = {(p.column, p.kind): p for p in report.problems}
    assert set(kinds) == {
        ("bmi", "missing-column"), ("notes", "extra-column"), ("age", "below-min"), ("age", "type"),
        ("age", "above-max"), ("sex", "not-allowed"), ("sex", "missing"), ("smoker", "type"),
        ("diagnosis", "unknown-label"), ("diagnosis", "missing"),
    }
    assert kinds[("age", "below-min")].rows == (3,) and kinds[("age", "above-max")].rows == (8,)
    assert kinds[("diagnosis", "unknown-label")].count == 1
    assert report.rows == 10 and report.bad_rows == 3
    message = str(raised.value)
    assert "10 problem(s), 3 of 10 rows affected" in message and "below min 18 (rows 3)" in message
    assert "unknown" not in message.replace("unknown-label", "") and "44.5" not in message  # rows, never values
    assert isinstance(raised.value, InputValidationError)


def test_first_rows_are_capped_and_counts_are_totals(tmp_path: Path, schema: SiteSchema) -> None:
    path = tmp_path / "many.csv"
    path.write_text("age,bmi,sex,smoker,diagnosis\n" + "".join(f"{i},20,F,1,benign\n" for i in range(12)))
    (problem,) = check_file(path, schema).report.problems
    assert problem.count == 12 and problem.rows == (1, 2, 3, 4, 5)
    assert "12 row(s) below min 18 (rows 1, 2, 3, 4, 5, …)" in problem.describe()


def test_parquet_is_checked_like_csv(tmp_path: Path, schema: SiteSchema) -> None:
    table = pa.table({
        "age": pa.array([34, 61, 15], pa.int64()), "bmi": pa.array([22.5, None, float("nan")]),
        "sex": ["F", "M", "M"], "smoker": [True, False, True], "diagnosis": ["benign", "malignant", "lupus"],
    })
    path = tmp_path / "site.parquet"
    pq.write_table(table, path)
    assert read_table(path).num_rows == 3
    report = check_file(path, schema).report
    assert {(p.column, p.kind, p.rows) for p in report.problems} == {
        ("age", "below-min", (3,)), ("diagnosis", "unknown-label", (3,)),
    }
    good = tmp_path / "good.parquet"
    pq.write_table(table.slice(0, 2), good)
    data = load_site_data(good, schema, ["age", "bmi"], "diagnosis", 2, ["benign", "malignant"])
    assert data.features.tolist() == [[34, 22.5], [61, 22.5]] and data.labels.tolist() == [0, 1]


def test_implicit_schema_accepts_simulation_files(tmp_path: Path) -> None:
    path = tmp_path / "site-0.csv"
    path.write_text("a,b,label\n0.5,1,0\n2,3,1\n")
    data = load_site_data(path, SiteSchema.implicit(["b", "a"], "label", 2), ["b", "a"], "label", 2,
                          ["malignant", "benign"])
    assert data.features.tolist() == [[1, 0.5], [3, 2]] and data.labels.tolist() == [0, 1]
    path.write_text("a,b,label\ninf,1,0\n2,3,7\n")
    with pytest.raises(SchemaValidationError, match="2 problem"):
        load_site_data(path, SiteSchema.implicit(["a"], "label", 2), ["a"], "label", 2)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('label = "y"\nlabel-values = [0, 1]\n[columns]\na = { type = "text" }', "needs type"),
        ('label = "y"\nlabel-values = [0, 1]\n[columns]\na = { type = "int", mn = 0 }', r"unknown keys \['mn'\]"),
        ('label = "y"\nlabel-values = [0]\n[columns]\na = { type = "int" }', "at least two distinct"),
        ('label = "y"\nlabel-values = [0, 1]\n[columns]\na = { type = "category" }', "needs 'values'"),
        ('label = "y"\nlabel-values = [0, 1]\n[columns]\na = { type = "int", min = 5, max = 1 }', "min > max"),
        ('label = "y"\nlabel-values = [0, 1]\n[columns]\ny = { type = "int" }', "also declared"),
        ('label = "y"\n[columns]\na = { type = "int" }', "needs 'label', 'label-values'"),
        ("label = ", "not valid TOML"),
    ],
)
def test_bad_schema_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "schema.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=match):
        SiteSchema.load(path)


@pytest.mark.parametrize(
    ("bounds", "match"),
    [
        ("min = nan", r"column 'age': min must be a finite number, got nan"),
        ("max = nan", r"column 'age': max must be a finite number, got nan"),
        ("min = 0, max = -nan", r"column 'age': max must be a finite number"),
        ("max = inf", r"column 'age': max must be a finite number, got inf"),
        ('min = "zero"', r"column 'age': min must be a finite number, got 'zero'"),
        ("min = true", r"column 'age': min must be a finite number, got True"),
    ],
)
def test_a_bound_that_is_not_a_finite_number_is_refused(tmp_path: Path, bounds: str, match: str) -> None:
    """``min = nan`` compares False with every value: accepted, it would silently disable the bound."""
    path = tmp_path / "schema.toml"
    path.write_text(f'label = "y"\nlabel-values = [0, 1]\n[columns]\nage = {{ type = "float", {bounds} }}\n')
    with pytest.raises(ConfigurationError, match=match) as raised:
        SiteSchema.load(path)
    assert "\n" not in str(raised.value)


def test_schema_must_fit_the_federations_model(tmp_path: Path, schema: SiteSchema) -> None:
    path = tmp_path / "site.csv"
    path.write_text(GOOD)
    with pytest.raises(ConfigurationError, match=r"lacks \['height'\]"):
        load_site_data(path, schema, ["age", "height"], "diagnosis", 2)
    with pytest.raises(ConfigurationError, match="label-values"):
        load_site_data(path, schema, ["age"], "diagnosis", 2, ["healthy", "ill"])
    with pytest.raises(ConfigurationError, match="unknown format"):
        read_table(tmp_path / "schema.toml")
    np.testing.assert_equal(read_table(path).header, ("age", "bmi", "sex", "smoker", "diagnosis"))
