"""The v2 REST routes in process (TestClient): output modes, rollouts, objections and refusals, against v1.

The real-server, real-client checks are in ``test_clients.py``; here the
app is built directly so that settings (output modes, canaries, objection
lists) change per test at no process cost.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lifecycle.errors import ConfigurationError
from lifecycle.governance.objections import ObjectionStore
from lifecycle.packaging import publish_model
from lifecycle.registry import DeploymentStore, Registry, VersionRecord
from serving.app import create_app
from serving.guards.keys import CreatedKey
from serving.protocols.v2.tensors import OutputTensor
from serving.settings import OutputPolicy, ServingSettings
from tests.conftest import make_publication
from tests.serving.conftest import bearer

ROWS = [[0.5, -1.0, 2.0, 0.0], [3.0, 3.0, -3.0, 1.0]]
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 4], "data": ROWS}]}


def client_for(registry: Registry, **settings: Any) -> Iterator[TestClient]:
    app = create_app(registry, ServingSettings(quota_rate=1000, quota_burst=1000, max_body_bytes=4096, **settings))
    with TestClient(app) as client:
        yield client


@pytest.fixture
def topk(registry: Registry, published: VersionRecord) -> Iterator[TestClient]:
    yield from client_for(registry, outputs={"demo": OutputPolicy(output_mode="top-k", top_k=2, precision=2)})


@pytest.fixture
def plain(registry: Registry, published: VersionRecord) -> Iterator[TestClient]:
    yield from client_for(registry)


def outputs(answer: Any) -> dict[str, dict[str, Any]]:
    assert answer.status_code == 200, answer.text
    return {o["name"]: o for o in answer.json()["outputs"]}


def test_top_k_outputs_equal_the_v1_top_k(topk: TestClient, predict_key: CreatedKey) -> None:
    v1 = topk.post("/v1/models/demo/predict", json={"instances": ROWS}, headers=bearer(predict_key)).json()
    got = outputs(topk.post("/v2/models/demo/infer", json=BODY, headers=bearer(predict_key)))
    assert list(got) == ["label", "top_k_labels", "top_k_scores"]
    assert got["label"]["data"] == v1["predictions"]
    assert got["top_k_labels"]["shape"] == [2, 2] and got["top_k_scores"]["datatype"] == "FP64"
    labels = np.asarray(got["top_k_labels"]["data"]).reshape(2, 2).tolist()
    scores = np.asarray(got["top_k_scores"]["data"]).reshape(2, 2).tolist()
    assert [[{"label": lab, "score": s} for lab, s in zip(ls, ss, strict=True)]
            for ls, ss in zip(labels, scores, strict=True)] == v1["top_k"]
    meta = topk.get("/v2/models/demo", headers=bearer(predict_key)).json()
    assert [o["name"] for o in meta["outputs"]] == ["label", "top_k_labels", "top_k_scores"]


def test_a_label_only_model_refuses_score_outputs_before_scoring(plain: TestClient, predict_key: CreatedKey) -> None:
    body = {**BODY, "outputs": [{"name": "probabilities"}]}
    refused = plain.post("/v2/models/demo/infer", json=body, headers=bearer(predict_key))
    assert refused.status_code == 400
    assert refused.json() == {"error": "model 'demo' has no output 'probabilities' (output mode 'label'); "
                                       "it answers with: label"}


def test_binary_outputs_follow_the_json_header(plain: TestClient, predict_key: CreatedKey) -> None:
    raw = np.asarray(ROWS, dtype="<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 4],
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    answer = plain.post("/v2/models/demo/infer", content=header + raw,
                        headers={**bearer(predict_key), "Inference-Header-Content-Length": str(len(header))})
    assert answer.status_code == 200, answer.text
    size = int(answer.headers["inference-header-content-length"])
    document = json.loads(answer.content[:size])
    label = document["outputs"][0]
    assert "data" not in label and label["parameters"]["binary_data_size"] == len(answer.content) - size
    v1 = plain.post("/v1/models/demo/predict", json={"instances": ROWS}, headers=bearer(predict_key)).json()
    assert answer.content[size:] == OutputTensor("label", "BYTES", (2,), v1["predictions"]).to_bytes()
    (first,) = struct.unpack("<I", answer.content[size:size + 4])
    assert answer.content[size + 4:size + 4 + first].decode() == v1["predictions"][0]


@pytest.mark.parametrize(("body", "headers", "message"), [
    (b"not json", {}, "not valid JSON"),
    (b"", {}, "the body is empty"),
    (b'{"inputs": [], "extra": 1}', {}, "unexpected field 'extra'"),
    (b'{"inputs": []}', {}, "exactly one tensor"),
    (json.dumps({**BODY, "outputs": [{"name": "label", "parameters": {"class_count": 2}}]}).encode(), {},
     "classification extension is not served"),
    (json.dumps({**BODY, "parameters": {"subject_id": "\u00e9"}}).encode(), {}, "'subject_id' must be"),
    (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}]}',
     {"Inference-Header-Content-Length": "999"}, "byte length of the JSON part"),
    (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                             "data": [[0.0, 0.0], [0.0, 0.0]]}]}).encode(), {}, "nested as 2 rows"),
    (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                             "data": [0.0, 0.0, "1", 0.0]}]}).encode(), {}, "instance 0 value 2"),
])
def test_malformed_requests_are_a_400_saying_what_is_wrong(plain: TestClient, predict_key: CreatedKey, body: bytes,
                                                          headers: dict[str, str], message: str) -> None:
    refused = plain.post("/v2/models/demo/infer", content=body, headers={**bearer(predict_key), **headers})
    assert refused.status_code == 400, refused.text
    assert message in refused.json()["error"]


def test_other_refusals_have_the_protocol_shape(plain: TestClient, predict_key: CreatedKey,
                                               admin_key: CreatedKey) -> None:
    assert plain.post("/v2/models/nope/infer", json=BODY, headers=bearer(predict_key)).status_code == 404
    assert plain.get("/v2/models/demo/versions/x", headers=bearer(predict_key)).status_code == 400
    too_big = plain.post("/v2/models/demo/infer", content=b"[" * 5000, headers=bearer(predict_key))
    assert too_big.status_code == 413 and "exceeds 4096 bytes" in too_big.json()["error"]
    assert plain.get("/v2", headers=bearer(admin_key)).json()["name"] == "fedguard"  # admin implies predict
    assert plain.get("/v2").status_code == 401


def test_a_canary_key_is_answered_by_the_canary_and_a_version_path_follows_routing(
    registry: Registry, published: VersionRecord, predict_key: CreatedKey,
) -> None:
    store = DeploymentStore(registry)
    store.adopt("demo", actor="test")
    publish_model(registry, make_publication(seed=3))
    store.canary("demo", 2, 100, actor="test")  # every key
    for client in client_for(registry):
        meta = client.get("/v2/models/demo", headers=bearer(predict_key)).json()
        assert meta["versions"] == ["2"]
        answer = client.post("/v2/models/demo/versions/2/infer", json=BODY, headers=bearer(predict_key))
        v1 = client.post("/v1/models/demo/predict", json={"instances": ROWS}, headers=bearer(predict_key)).json()
        assert v1["version"] == 2 and answer.json()["model_version"] == "2"
        assert outputs(answer)["label"]["data"] == v1["predictions"]
        stepped = client.post("/v2/models/demo/versions/1/infer", json=BODY, headers=bearer(predict_key))
        assert stepped.status_code == 404 and "error" in stepped.json()
        assert client.get("/v2/models/demo/versions/1/ready", headers=bearer(predict_key)).status_code == 404


def test_a_subject_who_objected_is_refused_through_v2_too(registry: Registry, published: VersionRecord,
                                                          predict_key: CreatedKey) -> None:
    ObjectionStore(registry).add("demo", "default", ["MRN-0042"], reason="letter", actor="cli:dpo")
    for client in client_for(registry):
        body = {**BODY, "parameters": {"subject_id": "MRN-0042"}}
        refused = client.post("/v2/models/demo/infer", json=body, headers=bearer(predict_key))
        assert refused.status_code == 403 and "objected" in refused.json()["error"]
        other = {**BODY, "parameters": {"subject_id": "MRN-0043"}}
        assert client.post("/v2/models/demo/infer", json=other, headers=bearer(predict_key)).status_code == 200


def test_grpc_without_tls_is_refused_off_loopback(registry: Registry, published: VersionRecord) -> None:
    with pytest.raises(ConfigurationError, match="without TLS"):
        create_app(registry, ServingSettings(host="0.0.0.0", grpc_port=0))
