"""Served models: signature verified before loading, inputs checked against the signed schema."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifecycle.artifacts import ONNX_NAME, SIGNATURE_NAME, WEIGHTS_NAME, load_model
from lifecycle.bom import BOM_NAME
from lifecycle.bom.lineage import ONNX_PREFIX, SERVING_FORMAT
from lifecycle.errors import InputValidationError, SignatureError, StateError
from lifecycle.packaging import publish_model
from lifecycle.registry import Registry, VersionRecord
from lifecycle.signing import ensure_signing_key, sign_model
from serving.models import ServedModel, load_served_models, load_version
from serving.runtime import OnnxModel
from tests.conftest import make_publication


def tamper(path: Path) -> None:
    """Flip the last byte of ``path`` (still a loadable file, no longer the signed one)."""
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def served(registry: Registry, published: VersionRecord) -> ServedModel:
    return load_version(published, registry.public_key_path())


def test_loads_the_newest_version_of_each_model(registry: Registry, published: VersionRecord) -> None:
    publish_model(registry, make_publication("demo", seed=1))
    publish_model(registry, make_publication("other", features=6, seed=2))
    models = load_served_models(registry)
    assert {(m.name, m.version, m.num_features) for m in models.values()} == {("demo", 2, 4), ("other", 1, 6)}


def test_tampered_weights_are_refused_naming_the_file(registry: Registry, published: VersionRecord) -> None:
    tamper(published.artifact.model_dir / WEIGHTS_NAME)
    with pytest.raises(SignatureError, match=r"demo:1.*weights\.safetensors") as caught:
        load_served_models(registry)
    assert caught.value.exit_code == 5


def test_a_tampered_onnx_export_is_refused_naming_the_file(registry: Registry, published: VersionRecord) -> None:
    tamper(published.artifact.model_dir / ONNX_NAME)
    with pytest.raises(SignatureError, match=r"demo:1.*model\.onnx") as caught:
        load_served_models(registry)
    assert caught.value.exit_code == 5


def _as_published_before_onnx(registry: Registry, version: VersionRecord) -> None:
    """Turn ``version``'s artifact into one published before ONNX export: no model.onnx, no section, re-signed."""
    model_dir = version.artifact.model_dir
    for path in (model_dir, *model_dir.iterdir(), version.artifact.root, version.artifact.signature_path):
        path.chmod(0o700 if path.is_dir() else 0o600)
    (model_dir / ONNX_NAME).unlink()
    bom = json.loads((model_dir / BOM_NAME).read_text())
    component = bom["metadata"]["component"]
    component["properties"] = [p for p in component["properties"]
                               if p["name"] != SERVING_FORMAT and not p["name"].startswith(ONNX_PREFIX)]
    (model_dir / BOM_NAME).write_text(json.dumps(bom, indent=2, sort_keys=True) + "\n")
    sign_model(model_dir, version.artifact.root / SIGNATURE_NAME, ensure_signing_key(registry.home.keys))


def test_a_model_published_before_onnx_is_refused_with_one_line(registry: Registry, published: VersionRecord) -> None:
    _as_published_before_onnx(registry, published)
    with pytest.raises(StateError, match=r"^demo:1 was published before models were exported to ONNX .*re-publish") \
            as caught:
        load_served_models(registry)
    assert "\n" not in str(caught.value) and caught.value.exit_code == 3


def test_the_session_runs_only_the_bytes_the_bom_names(served: ServedModel, published: VersionRecord) -> None:
    data = (published.artifact.model_dir / ONNX_NAME).read_bytes()
    OnnxModel(data, sha256=hashlib.sha256(data).hexdigest(), num_features=4, ref="demo:1")
    with pytest.raises(StateError, match="not the file its signed BOM names"):
        OnnxModel(data + b"\0", sha256=hashlib.sha256(data).hexdigest(), num_features=4, ref="demo:1")
    with pytest.raises(StateError, match="not one float \\[batch, 5\\] input"):
        OnnxModel(data, sha256=hashlib.sha256(data).hexdigest(), num_features=5, ref="demo:1")
    with pytest.raises(StateError, match="ONNX Runtime cannot load"):
        OnnxModel(b"junk", sha256=hashlib.sha256(b"junk").hexdigest(), num_features=4, ref="demo:1")


def test_one_bad_model_stops_all(registry: Registry, published: VersionRecord) -> None:
    other = publish_model(registry, make_publication("other", seed=3))
    tamper(other.artifact.model_dir / "bom.json")
    with pytest.raises(SignatureError, match=r"other:1.*bom\.json"):
        load_served_models(registry)


def test_removed_and_added_files_are_named(registry: Registry, published: VersionRecord) -> None:
    (published.artifact.model_dir / "MODEL_CARD.md").unlink()
    (published.artifact.model_dir / "extra.bin").write_bytes(b"x")
    with pytest.raises(SignatureError, match=r"demo:1: MODEL_CARD\.md, extra\.bin in"):
        load_served_models(registry)


def test_missing_signature_is_refused(registry: Registry, published: VersionRecord) -> None:
    published.artifact.signature_path.unlink()
    with pytest.raises(SignatureError, match="unsigned"):
        load_served_models(registry)


def test_a_key_other_than_the_trusted_one_is_refused(
    registry: Registry, published: VersionRecord, tmp_path: Path
) -> None:
    stranger = ensure_signing_key(tmp_path / "stranger")
    with pytest.raises(SignatureError, match="does not verify"):
        load_served_models(registry, public_key=stranger.public_key)


def test_predictions_match_the_model_run_offline(served: ServedModel, published: VersionRecord) -> None:
    instances = [[0.5, -1.0, 2.0, 0.0], [3.0, 3.0, -3.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    module, _ = load_model(published.artifact.model_dir)
    with torch.no_grad():
        logits = module(torch.tensor(instances))
    expected = [("no", "yes")[c] for c in logits.argmax(dim=1).tolist()]
    batch = served.to_batch(instances, max_instances=8)
    assert served.predict(batch) == expected
    np.testing.assert_allclose(served.logits(batch), logits.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(served.probabilities(batch), torch.softmax(logits.double(), dim=1).numpy(), atol=1e-6)


def test_the_batch_axis_is_dynamic(served: ServedModel) -> None:
    for rows in (1, 7, 1024):
        assert served.logits(np.zeros((rows, 4), dtype=np.float32)).shape == (rows, 2)


def test_class_indices_when_the_schema_has_no_labels(served: ServedModel) -> None:
    bare = ServedModel(served.name, served.version, served.digest, served.runtime,
                       type(served.schema)(features=served.schema.features))
    predictions = bare.predict(bare.to_batch([[1.0, 2.0, 3.0, 4.0]], 8))
    assert predictions in ([0], [1])


@pytest.mark.parametrize(
    ("instances", "message"),
    [
        ([], "empty"),
        ([[0.0] * 4] * 9, "9 instances in one request; the limit is 8"),
        ([[0.0] * 4, [0.0] * 3], r"instance 1 has 3 values; the model expects 4 \(features: f0, f1, f2, f3\)"),
        ([[0.0, math.nan, 0.0, 0.0]], "instance 0 value 1 \\(feature 'f1'\\) is not finite"),
        ([[0.0, 0.0, 0.0, -math.inf]], "instance 0 value 3 \\(feature 'f3'\\) is not finite"),
        ([[0.0, 0.0, 1e39, 0.0]], "outside the float32 range"),
    ],
)
def test_invalid_batches_are_named(served: ServedModel, instances: list[list[float]], message: str) -> None:
    with pytest.raises(InputValidationError, match=message):
        served.to_batch(instances, max_instances=8)


def test_long_feature_lists_are_shortened(served: ServedModel) -> None:
    wide = ServedModel("w", 1, "d", served.runtime, type(served.schema)(features=tuple(f"x{i}" for i in range(30))))
    assert wide.describe_features().endswith("x11, … (18 more)")


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(finite, min_size=4, max_size=4), min_size=1, max_size=8))
def test_any_valid_batch_gets_one_label_per_instance(served: ServedModel, instances: list[list[float]]) -> None:
    predictions = served.predict(served.to_batch(instances, max_instances=8))
    assert len(predictions) == len(instances) and set(predictions) <= {"no", "yes"}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(finite, max_size=10).filter(lambda row: len(row) != 4), min_size=1, max_size=4))
def test_any_wrong_width_is_refused(served: ServedModel, instances: list[list[float]]) -> None:
    with pytest.raises(InputValidationError, match="the model expects 4"):
        served.to_batch(instances, max_instances=8)


def test_one_session_per_version_with_the_configured_threads(registry: Registry, published: VersionRecord) -> None:
    from serving.app import create_app
    from serving.settings import ServingSettings

    default = load_version(published, registry.public_key_path())
    assert isinstance(default.runtime, OnnxModel)
    assert default.runtime.session.get_providers() == ["CPUExecutionProvider"]
    assert default.runtime.session.get_session_options().intra_op_num_threads == 1
    app = create_app(registry, ServingSettings(onnx_threads=3))
    served = app.state.fedguard.models["demo"]
    assert served.runtime.session.get_session_options().intra_op_num_threads == 3
