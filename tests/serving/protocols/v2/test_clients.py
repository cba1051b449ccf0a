"""The Open Inference Protocol v2 of a real ``fedguard serve`` (TLS, ``--grpc-port``), called by real clients.

One server per module, over a registry with the signed ``demo`` model (4
features, labels ``no``/``yes``), its output mode set to ``probabilities``
(3 decimals) so that every output tensor is checked, ``f0`` limited to
[-100, 100]. The clients are ``tritonclient.http`` and ``tritonclient.grpc``
(Triton's own, each in its default mode: binary tensors over HTTP, raw
contents over gRPC), and plain ``httpx`` for the JSON form; every answer is
compared with the v1 route's for the same rows. The kill-switch test comes
last in the file: it leaves the model switched off.

The ``kserve`` SDK is not used: it does not install beside fedguard's pins
(docs/serving.md, "Open Inference Protocol v2", says why).
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gevent.ssl
import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from lifecycle.packaging import publish_model
from lifecycle.registry import DeploymentStore, Registry
from lifecycle.settings import Settings
from serving.guards.keys import create_key
from tests.conftest import make_publication
from tests.served import wait_served
from tests.serving.test_integration import self_signed

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[4]
DOC = ROOT / "docs" / "serving.md"
ROWS = np.asarray([[0.5, -1.0, 2.0, 0.0], [3.0, 3.0, -3.0, 1.0], [-2.0, 0.25, 1.5, -0.5]], dtype=np.float32)
GRPC_LINE = re.compile(r"gRPC \(Open Inference Protocol v2\) on (\S+):(\d+) \(TLS\)")


@dataclass(frozen=True)
class Server:
    """The running server: its URLs, its certificate, and keys."""

    url: str  # https://127.0.0.1:PORT
    grpc: str  # 127.0.0.1:PORT
    cert: Path
    key: str
    limited: str  # a key allowed one request
    home: Path
    log: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=ssl.create_default_context(cafile=self.cert), timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("oip")
    home = root / "home"
    registry = Registry.open(Settings(home=home))
    publish_model(registry, make_publication())
    key = create_key(registry, "predict", "oip", actor="test")
    limited = create_key(registry, "predict", "oip-limited", actor="test")
    cert, private = self_signed(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGUARD_")}
    env.update(
        PYTHONPATH=str(ROOT), FEDGUARD_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", COLUMNS="300",
        FEDGUARD_SERVE_OUTPUTS=json.dumps({"demo": {"output_mode": "probabilities", "precision": 3}}),
        FEDGUARD_SERVE_FEATURE_RANGES=json.dumps({"demo": {"f0": [-100, 100]}}),
        FEDGUARD_SERVE_QUOTA_BURST="1000", FEDGUARD_SERVE_QUOTA_RATE="1000",
        FEDGUARD_SERVE_KEY_QUOTAS=json.dumps({limited.info.key_id: {"burst": 1, "rate": 0.001}}),
        FEDGUARD_SERVE_DEPLOY_REFRESH_SECONDS="0.05",
    )
    log = root / "serve.log"
    command = [sys.executable, "-m", "fedguard.cli", "serve", "--host", "127.0.0.1", "--port", "0",
               "--grpc-port", "0", "--ssl-certfile", str(cert), "--ssl-keyfile", str(private)]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = wait_served(process, log, 120, verify=ssl.create_default_context(cafile=cert))
        found = GRPC_LINE.search(log.read_text(errors="replace"))  # logged at startup, before uvicorn's line
        assert found is not None, log.read_text()[-3000:]
        yield Server(url, f"127.0.0.1:{found.group(2)}", cert, key.key, limited.key, home, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def v1_answer(server: Server, rows: np.ndarray) -> dict[str, object]:
    with server.http() as http:
        response = http.post("/v1/models/demo/predict", json={"instances": rows.tolist()}, headers=server.headers)
    assert response.status_code == 200, response.text
    answer: dict[str, object] = response.json()
    return answer


def assert_equals_v1(v1: dict[str, object], label: np.ndarray, probabilities: np.ndarray,
                     classes: np.ndarray) -> None:
    as_text = [item.decode() if isinstance(item, bytes) else item for item in label.tolist()]
    assert as_text == v1["predictions"]
    assert probabilities.tolist() == v1["probabilities"]  # the same rounded values, exactly
    assert [item.decode() if isinstance(item, bytes) else item for item in classes.tolist()] == v1["classes"]


def http_client(server: Server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(
        server.url.removeprefix("https://"), ssl=True, ssl_options={"ca_certs": str(server.cert)},
        ssl_context_factory=gevent.ssl.create_default_context)


def grpc_client(server: Server) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.grpc, ssl=True, root_certificates=str(server.cert))


def test_tritonclient_http_answers_as_v1(server: Server) -> None:
    client = http_client(server)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("demo", headers=server.headers)
        meta = client.get_model_metadata("demo", headers=server.headers)
        assert meta["name"] == "demo" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime"
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
        assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
            ("label", "BYTES", [-1]), ("probabilities", "FP64", [-1, 2]), ("classes", "BYTES", [2])]
        assert client.get_model_metadata("demo", "1", headers=server.headers)["versions"] == ["1"]
        tensor = httpclient.InferInput("input", list(ROWS.shape), "FP32")
        tensor.set_data_from_numpy(ROWS)  # binary tensor data, as tritonclient sends by default
        result = client.infer("demo", [tensor], headers=server.headers)
        assert result.get_response()["model_version"] == "1"
        assert_equals_v1(v1_answer(server, ROWS), result.as_numpy("label"), result.as_numpy("probabilities"),
                         result.as_numpy("classes"))
        json_tensor = httpclient.InferInput("input", list(ROWS.shape), "FP32")
        json_tensor.set_data_from_numpy(ROWS, binary_data=False)
        only = client.infer("demo", [json_tensor], model_version="1", headers=server.headers,
                            outputs=[httpclient.InferRequestedOutput("label", binary_data=False)])
        assert [o["name"] for o in only.get_response()["outputs"]] == ["label"]
        assert only.as_numpy("label").tolist() == v1_answer(server, ROWS)["predictions"]
    finally:
        client.close()


def test_tritonclient_grpc_answers_as_v1_over_tls(server: Server) -> None:
    client = grpc_client(server)
    headers = {"authorization": f"Bearer {server.key}"}
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("demo", headers=headers)
        meta = client.get_model_metadata("demo", headers=headers, as_json=True)
        assert meta["name"] == "demo" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime"
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}]  # int64 as JSON
        server_meta = client.get_server_metadata(headers=headers, as_json=True)
        assert server_meta["name"] == "fedguard" and "binary_tensor_data" in server_meta["extensions"]
        tensor = grpcclient.InferInput("input", list(ROWS.shape), "FP32")
        tensor.set_data_from_numpy(ROWS)
        result = client.infer("demo", [tensor], headers=headers, request_id="r-1")
        assert result.get_response().id == "r-1" and result.get_response().model_version == "1"
        assert_equals_v1(v1_answer(server, ROWS), result.as_numpy("label"), result.as_numpy("probabilities"),
                         result.as_numpy("classes"))
        probabilities = client.infer("demo", [tensor], model_version="1", headers=headers,
                                     outputs=[grpcclient.InferRequestedOutput("probabilities")])
        assert [o.name for o in probabilities.get_response().outputs] == ["probabilities"]
    finally:
        client.close()


def test_plain_json_over_rest_answers_as_v1(server: Server) -> None:
    body = {"id": "a", "inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32", "data": ROWS.tolist()}]}
    with server.http() as http:
        answer = http.post("/v2/models/demo/infer", json=body, headers=server.headers)
        flat = http.post("/v2/models/demo/versions/1/infer", headers=server.headers,
                         json={**body, "inputs": [{**body["inputs"][0], "data": ROWS.ravel().tolist()}]})
    assert answer.status_code == 200, answer.text
    assert flat.json() == answer.json()
    document = answer.json()
    assert document["model_name"] == "demo" and document["model_version"] == "1" and document["id"] == "a"
    outputs = {o["name"]: o for o in document["outputs"]}
    assert outputs["probabilities"]["shape"] == [3, 2]
    assert_equals_v1(v1_answer(server, ROWS), np.asarray(outputs["label"]["data"]),
                     np.asarray(outputs["probabilities"]["data"]).reshape(3, 2), np.asarray(outputs["classes"]["data"]))


def test_no_key_is_refused_on_both_transports(server: Server) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.0, 0.0, 0.0, 0.0]}]}
    with server.http() as http:
        for method, path in (("POST", "/v2/models/demo/infer"), ("GET", "/v2/models/demo"),
                             ("GET", "/v2/models/demo/ready")):
            refused = http.request(method, path, json=body if method == "POST" else None)
            assert refused.status_code == 401, (path, refused.text)
            assert "API key" in refused.json()["error"] and refused.headers["www-authenticate"].startswith("Bearer")
        wrong = http.get("/v2/models/demo", headers={"Authorization": "Bearer fgk_0000000000000000_nope"})
        assert wrong.status_code == 401
        assert http.get("/v2/health/live").json() == {"live": True}  # health needs no key
    client = grpc_client(server)
    tensor = grpcclient.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    try:
        for call in (lambda: client.infer("demo", [tensor]), lambda: client.get_model_metadata("demo")):
            with pytest.raises(InferenceServerException) as refused:
                call()
            assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
            assert "API key" in refused.value.message()
    finally:
        client.close()


@pytest.mark.parametrize(("shape", "datatype", "data", "message"), [
    ([1, 3], "FP32", [0.0, 0.0, 0.0], "instance 0 has 3 values; the model expects 4"),
    ([4], "FP32", [0.0, 0.0, 0.0, 0.0], "send [batch, features]"),
    ([1, 4], "FP32", [0.0, 0.0, 0.0], "holds 3 values but its shape [1, 4] needs 4"),
    ([1, 4], "INT64", [0, 0, 0, 0], "has datatype 'INT64'; send FP32"),
    ([1, 4], "FP32", [500.0, 0.0, 0.0, 0.0], "f0"),
    ([1, 4], "FP32", [True, 0.0, 0.0, 0.0], "is not a number"),
])
def test_invalid_input_is_a_400_naming_the_problem(server: Server, shape: list[int], datatype: str,
                                                   data: list[object], message: str) -> None:
    body = {"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]}
    with server.http() as http:
        refused = http.post("/v2/models/demo/infer", json=body, headers=server.headers)
    assert refused.status_code == 400, refused.text
    assert message in refused.json()["error"]


def test_invalid_input_over_grpc_is_invalid_argument(server: Server) -> None:
    client = grpc_client(server)
    headers = {"authorization": f"Bearer {server.key}"}
    try:
        narrow = grpcclient.InferInput("input", [1, 3], "FP32")
        narrow.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
        out_of_range = grpcclient.InferInput("input", [1, 4], "FP32")
        out_of_range.set_data_from_numpy(np.asarray([[500.0, 0, 0, 0]], dtype=np.float32))
        as_double = grpcclient.InferInput("input", [1, 4], "FP64")
        as_double.set_data_from_numpy(np.zeros((1, 4), dtype=np.float64))
        misnamed = grpcclient.InferInput("x", [1, 4], "FP32")
        misnamed.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
        for tensor, message in ((narrow, "has 3 values"), (out_of_range, "f0"), (as_double, "send FP32"),
                                (misnamed, "one input named 'input'")):
            with pytest.raises(InferenceServerException) as refused:
                client.infer("demo", [tensor], headers=headers)
            assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert message in refused.value.message()
        with pytest.raises(InferenceServerException) as unknown:
            client.infer("demo", [narrow], headers=headers, outputs=[grpcclient.InferRequestedOutput("logits")])
        assert unknown.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "no output 'logits'" in unknown.value.message()
        with pytest.raises(InferenceServerException) as missing:
            client.get_model_metadata("nope", headers=headers)
        assert missing.value.status() == "StatusCode.NOT_FOUND"
        with pytest.raises(InferenceServerException) as other_version:
            client.get_model_metadata("demo", "7", headers=headers)
        assert other_version.value.status() == "StatusCode.NOT_FOUND"
    finally:
        client.close()


def test_fp32_contents_over_grpc_with_fedguards_own_stubs(server: Server) -> None:
    """The typed-contents form (no raw bytes), through the committed stubs, beside tritonclient's in one process."""
    from serving.protocols.v2.grpc import inference_pb2 as pb
    from serving.protocols.v2.grpc import inference_pb2_grpc as pb_grpc

    request = pb.ModelInferRequest(model_name="demo", id="typed")
    request.inputs.add(name="input", datatype="FP32", shape=list(ROWS.shape)).contents.fp32_contents.extend(
        ROWS.ravel().tolist())
    request.parameters["subject_id"].string_param = "MRN-0001"  # listed by no one: scored
    with grpc.secure_channel(server.grpc, grpc.ssl_channel_credentials(server.cert.read_bytes())) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(request, metadata=(("authorization", f"Bearer {server.key}"),), timeout=30)
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready
    assert reply.id == "typed" and [o.name for o in reply.outputs] == ["label", "probabilities", "classes"]
    probabilities = np.frombuffer(reply.raw_output_contents[1], dtype="<f8").reshape(3, 2)
    assert probabilities.tolist() == v1_answer(server, ROWS)["probabilities"]


def test_quota_refusals_and_metrics(server: Server) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.0, 0.0, 0.0, 0.0]}]}
    limited = {"Authorization": f"Bearer {server.limited}"}  # one request, then nothing for ~1000 s
    client = grpc_client(server)
    tensor = grpcclient.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    with server.http() as http:
        assert http.post("/v2/models/demo/infer", json=body, headers=limited).status_code == 200
        over = http.post("/v2/models/demo/infer", json=body, headers=limited)
        assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
        try:
            with pytest.raises(InferenceServerException) as refused:
                client.infer("demo", [tensor], headers={"authorization": f"Bearer {server.limited}"})
            assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        finally:
            client.close()
        with grpc.secure_channel(server.grpc, grpc.ssl_channel_credentials(server.cert.read_bytes())) as channel:
            with pytest.raises(grpc.RpcError):  # Triton's repository RPCs are not served
                channel.unary_unary("/inference.GRPCInferenceService/RepositoryIndex")(b"", timeout=10)
            assert channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=10) == b"\x08\x01"
        exposition = http.get("/metrics").text
    assert 'fedguard_requests_total{model="demo",route="/v2/models/{name}/infer",status="429"} 1.0' in exposition
    assert ('fedguard_requests_total{model="demo",route="/inference.GRPCInferenceService/ModelInfer",status="429"} 1.0'
            in exposition)
    assert re.search(r'fedguard_predict_duration_seconds_count\{model="demo"\} [1-9]', exposition)


def docs_examples() -> list[str]:
    """The ```python blocks of docs/serving.md's Open Inference Protocol section, in order."""
    text = DOC.read_text()
    start = text.index("## 12. Open Inference Protocol v2")
    section = text[start:text.index("\n## ", start + 1)]
    return re.findall(r"^```python\n(.*?)^```", section, re.MULTILINE | re.DOTALL)


def test_the_docs_python_examples_run_and_print_what_they_show(server: Server) -> None:
    blocks = docs_examples()
    assert len(blocks) == 2, "docs/serving.md lost its tritonclient examples"
    env = {**os.environ, "HOST": server.url.removeprefix("https://"), "GRPC": server.grpc, "CA": str(server.cert),
           "KEY": server.key, "PYTHONPATH": str(ROOT)}
    for code in blocks:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{code}\n--- stderr ---\n{done.stderr[-3000:]}"
        shown = [line.split("# → ", 1)[1] for line in code.splitlines() if line.startswith("# → ")]
        assert done.stdout.splitlines() == shown, code


def test_a_killed_model_is_unavailable_on_both_transports(server: Server) -> None:
    """Last in the file: the model stays switched off."""
    DeploymentStore(Registry.open(Settings(home=server.home))).kill("demo", actor="test", reason="oip test")
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.0, 0.0, 0.0, 0.0]}]}
    with server.http() as http:
        deadline = time.monotonic() + 30  # each replica re-reads the switch within deploy_refresh_seconds
        while (answer := http.post("/v2/models/demo/infer", json=body, headers=server.headers)).status_code == 200:
            assert time.monotonic() < deadline, "the kill switch never reached the server"
            time.sleep(0.05)
        assert answer.status_code == 503 and "switched off" in answer.json()["error"]
        assert http.get("/v2/models/demo/ready", headers=server.headers).status_code == 503
    client = grpc_client(server)
    headers = {"authorization": f"Bearer {server.key}"}
    tensor = grpcclient.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    try:
        with pytest.raises(InferenceServerException) as refused:
            client.infer("demo", [tensor], headers=headers)
        assert refused.value.status() == "StatusCode.UNAVAILABLE" and "switched off" in refused.value.message()
        assert client.is_model_ready("demo", headers=headers) is False
    finally:
        client.close()
