"""Site data validation: clear errors naming line and column; stable manifests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from federation.tabular import DataSchema, load_csv, load_schema, write_csv
from lifecycle.errors import ConfigurationError, InputValidationError


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_roundtrip_and_manifest(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    y = np.array([0, 1, 1, 0])
    path = tmp_path / "site.csv"
    write_csv(path, x, y, ["a", "b", "c"], "label")
    data = load_csv(path, ["c", "a"], "label", 2)
    assert data.features.tolist() == x[:, [2, 0]].tolist()
    assert data.labels.tolist() == y.tolist()
    assert data.manifest == load_csv(path, ["a"], "label", 2).manifest
    path.write_text(path.read_text().replace("11.0", "11.5"))
    assert load_csv(path, ["a"], "label", 2).manifest != data.manifest


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ("a,b\n1,0\n", ConfigurationError, r"lacks columns \['label'\]"),
        ("a,label\nx,0\n", InputValidationError, "line 2, column 'a': 'x' is not a number"),
        ("a,label\n1,0\nnan,1\n", InputValidationError, "line 3, column 'a'.*not finite"),
        ("a,label\n1,2\n", InputValidationError, "label 2 is not a class index"),
        ("a,label\n", InputValidationError, "no data rows"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        load_csv(_write(tmp_path / "d.csv", text), ["a"], "label", 2)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_csv(tmp_path / "none.csv", ["a"], "label", 2)


def test_schema_files(tmp_path: Path) -> None:
    toml = _write(tmp_path / "s.toml", 'features = ["a", "b"]\ntarget = "y"\nlabels = ["no", "yes"]\n')
    assert load_schema(toml) == DataSchema(("a", "b"), "y", ("no", "yes"))
    with pytest.raises(ConfigurationError, match="needs 'features'"):
        load_schema(_write(tmp_path / "bad.json", '{"target": "y"}'))
    with pytest.raises(ConfigurationError, match="also listed as a feature"):
        DataSchema(("a", "y"), "y", ("0", "1"))
