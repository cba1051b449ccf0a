"""The Open Inference Protocol v2 over HTTP: ``/v2/...`` beside fedguard's ``/v1`` routes.

=========================================================  ======  =====================================
route                                                       key     answer
=========================================================  ======  =====================================
``GET /v2/health/live``                                    none    ``{"live": true}``
``GET /v2/health/ready``                                   none    ``{"ready": true}``; 503 when no model
                                                                    can answer
``GET /v2``                                                predict server metadata
``GET /v2/models/{name}[/versions/{v}]``                   predict model metadata
``GET /v2/models/{name}[/versions/{v}]/ready``             predict ``{"name", "ready"}``; 503 if killed
``POST /v2/models/{name}[/versions/{v}]/infer``            predict the output tensors
=========================================================  ======  =====================================

The key is the v1 route's, ``Authorization: Bearer <key>``; errors are the
protocol's ``{"error": "<message>"}`` (:mod:`serving.protocols.v2.errors`).
The routes are plain Starlette endpoints (not in ``/docs``: the protocol has
its own specification), inside the app's body limit and metrics middleware.

An inference body is JSON (``inputs``, optional ``outputs``, ``parameters``,
``id``). Triton's binary tensor extension is served too, because it is what
``tritonclient.http`` sends and asks for by default: a request whose
``Inference-Header-Content-Length`` header is set carries that many bytes of
JSON and then each input that names its ``binary_data_size``, raw; outputs
asked for with ``binary_data`` (or all, with ``binary_data_output``) come back
the same way after the JSON answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lifecycle.governance.objections import SUBJECT_ID_PATTERN
from serving.guards.auth import bearer_of
from serving.guards.body import check_depth
from serving.protocols.v2 import service
from serving.protocols.v2.errors import V2InputError, public_error
from serving.protocols.v2.tensors import InferRequest, instances_from_bytes, instances_from_json
from serving.state import ServingState, state_of

HEADER_LENGTH = "inference-header-content-length"
_REQUEST_FIELDS = frozenset({"id", "parameters", "inputs", "outputs"})
_INPUT_FIELDS = frozenset({"name", "datatype", "shape", "data", "parameters"})
_OUTPUT_FIELDS = frozenset({"name", "parameters"})
INFER_ROUTES = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")
"""The inference route templates (the metrics middleware times them as predict requests)."""

Handler = Callable[[Request, ServingState], Awaitable[Response]]


def _guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """The protocol's error boundary around ``handler``: any failure becomes ``{"error": ...}`` with its status."""

    async def endpoint(request: Request) -> Response:
        state = state_of(request)
        try:
            return await handler(request, state)
        except Exception as exc:  # noqa: BLE001 - the boundary: public_error logs it (500s with the traceback)
            client = request.client.host if request.client else "?"
            error = public_error(exc, state.settings, f"{request.method} {request.url.path} from {client}")
            headers = {}
            if error.status == 401:
                headers["WWW-Authenticate"] = 'Bearer realm="fedguard"'
            if error.retry_after is not None:
                headers["Retry-After"] = str(error.retry_after)
            return JSONResponse({"error": error.message}, status_code=error.status, headers=headers or None)

    return endpoint


async def _key(request: Request, state: ServingState) -> Any:
    return await service.authenticate(request.scope, state, await bearer_of(request))


def _version(request: Request) -> int | None:
    return service.parse_version(request.path_params.get("version"))


async def live(request: Request, state: ServingState) -> Response:
    """Liveness: the process answers (it starts only once every model verified)."""
    return JSONResponse({"live": True})


async def ready(request: Request, state: ServingState) -> Response:
    """Readiness: at least one model can answer now."""
    is_ready = service.server_ready(state)
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


async def server_metadata(request: Request, state: ServingState) -> Response:
    """Name, version and extensions of the server; a predict key is needed (a version helps only attackers)."""
    await _key(request, state)
    return JSONResponse({"name": service.SERVER_NAME, "version": service.server_version(),
                         "extensions": list(service.EXTENSIONS)})


async def model_metadata(request: Request, state: ServingState) -> Response:
    """A model's metadata as it answers this key."""
    key = await _key(request, state)
    found = await service.model_metadata(state, key, request.path_params["name"], _version(request))
    return JSONResponse(found.to_json())


async def model_ready(request: Request, state: ServingState) -> Response:
    """200 when the model answers this key now, 503 when it is switched off."""
    key = await _key(request, state)
    name = request.path_params["name"]
    is_ready = await service.model_ready(state, key, name, _version(request))
    return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 503)


async def infer(request: Request, state: ServingState) -> Response:
    """Score the request's input tensor through every guard; answer with the output tensors."""
    key = await _key(request, state)  # before a byte of the body is read
    body = await request.body()  # the body limit's counting receive applies here
    parsed = decode_request(body, request.headers.get(HEADER_LENGTH))
    answer = await service.infer(state, key, request.path_params["name"], _version(request), parsed)
    return encode_answer(answer, parsed)


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """The :class:`InferRequest` of a v2 JSON body, with binary tensor data after it when ``header_length`` is set.

    Raises
    ------
    V2InputError
        The body is not a v2 inference request fedguard can score; the message says what is wrong.
    """
    text, binary = body, b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise V2InputError(f"{HEADER_LENGTH} must be the byte length of the JSON part of the body")
        text, binary = body[: int(header_length)], body[int(header_length):]
    if not text:
        raise V2InputError("the body is empty; send a v2 inference request: {\"inputs\": [{\"name\": \"input\", "
                           "\"datatype\": \"FP32\", \"shape\": [n, features], \"data\": [...]}]}")
    check_depth(text)
    try:
        document = json.loads(text)
    except ValueError:
        raise V2InputError("the body is not valid JSON") from None
    if not isinstance(document, dict):
        raise V2InputError("the body must be a JSON object with 'inputs'")
    unknown = set(document) - _REQUEST_FIELDS
    if unknown:
        raise V2InputError(f"unexpected field {sorted(unknown)[0][:64]!r} in the body; a v2 request has "
                           "'inputs', and optionally 'outputs', 'parameters' and 'id'")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise V2InputError("'inputs' must hold exactly one tensor: a fedguard model takes one input, 'input'")
    instances = _instances(inputs[0], binary)
    parameters = _object(document.get("parameters"), "parameters")
    outputs, binary_outputs = _outputs(document.get("outputs"))
    request_id = document.get("id", "")
    if not isinstance(request_id, str) or len(request_id) > 128:
        raise V2InputError("'id' must be a string of at most 128 characters")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise V2InputError("parameter 'binary_data_output' must be true or false")
    return InferRequest(instances, outputs, binary_outputs, binary_default, request_id,
                        _subject(parameters.get("subject_id")))


def _object(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise V2InputError(f"'{what}' must be a JSON object")
    return value


def _instances(tensor: dict[str, Any], binary: bytes) -> Any:
    unknown = set(tensor) - _INPUT_FIELDS
    if unknown:
        raise V2InputError(f"unexpected field {sorted(unknown)[0][:64]!r} in input tensor")
    parameters = _object(tensor.get("parameters"), "inputs[0].parameters")
    size = parameters.get("binary_data_size")
    if size is None:
        return instances_from_json(tensor.get("name"), tensor.get("datatype"), tensor.get("shape"),
                                   tensor.get("data"))
    if type(size) is not int or size != len(binary) or "data" in tensor:
        raise V2InputError("input 'input' names a binary_data_size that is not the length of the binary data "
                           f"after the JSON part (set {HEADER_LENGTH}), or also has 'data'")
    return instances_from_bytes(tensor.get("name"), tensor.get("datatype"), tensor.get("shape"), binary)


def _outputs(value: object) -> tuple[tuple[str, ...], frozenset[str]]:
    if value is None:
        return (), frozenset()
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise V2InputError("'outputs' must be a list of objects with a 'name'")
    names, binary = [], set()
    for item in value:
        name = item.get("name")
        if not isinstance(name, str) or set(item) - _OUTPUT_FIELDS:
            raise V2InputError("each of 'outputs' must be {\"name\": ..., \"parameters\": {...}}")
        parameters = _object(item.get("parameters"), f"outputs '{name[:64]}' parameters")
        if parameters.get("classification") or parameters.get("class_count"):
            raise V2InputError("the classification extension is not served; ask for 'label' (and the scores "
                               "the model's output mode allows) instead")
        if parameters.get("binary_data") is True:
            binary.add(name)
        names.append(name)
    return tuple(names), frozenset(binary)


def _subject(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(SUBJECT_ID_PATTERN, value):
        raise V2InputError("parameter 'subject_id' must be a string of 1-128 printable ASCII characters")
    return value


def encode_answer(answer: service.InferAnswer, request: InferRequest) -> Response:
    """The JSON answer, with the outputs asked for in binary appended after it (binary tensor extension)."""
    outputs, blobs = [], []
    for tensor in answer.outputs:
        item: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if request.binary_default or tensor.name in request.binary_outputs:
            blob = tensor.to_bytes()
            item["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            item["data"] = tensor.data
        outputs.append(item)
    document: dict[str, Any] = {"model_name": answer.model_name, "model_version": answer.model_version,
                                "outputs": outputs}
    if answer.request_id:
        document["id"] = answer.request_id
    header = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(header + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})


ROUTES = [
    Route("/v2/health/live", _guarded(live), methods=["GET"], include_in_schema=False),
    Route("/v2/health/ready", _guarded(ready), methods=["GET"], include_in_schema=False),
    Route("/v2", _guarded(server_metadata), methods=["GET"], include_in_schema=False),
    Route("/v2/models/{name}", _guarded(model_metadata), methods=["GET"], include_in_schema=False),
    Route("/v2/models/{name}/versions/{version}", _guarded(model_metadata), methods=["GET"], include_in_schema=False),
    Route("/v2/models/{name}/ready", _guarded(model_ready), methods=["GET"], include_in_schema=False),
    Route("/v2/models/{name}/versions/{version}/ready", _guarded(model_ready), methods=["GET"],
          include_in_schema=False),
    *(Route(path, _guarded(infer), methods=["POST"], include_in_schema=False) for path in INFER_ROUTES),
]
"""The v2 REST routes, for :func:`serving.app.create_app` to add beside the v1 ones."""
