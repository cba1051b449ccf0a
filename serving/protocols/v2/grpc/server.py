"""The Open Inference Protocol v2 over gRPC: ``inference.GRPCInferenceService`` with ``grpcio``.

:func:`start` runs a :mod:`grpc.aio` server on the event loop of the HTTP
server (uvicorn's), started and stopped by the app's lifespan
(:func:`serving.app.create_app`, ``--grpc-port``): one process, one worker
lifecycle, one :class:`~serving.state.ServingState`, so both protocols share
the key cache, quotas, rollout router, kill switch, drift monitors and
metrics. Every RPC goes through :mod:`serving.protocols.v2.service`, the same
operations the REST routes call.

- **TLS**: the serving tier's certificate and key (``--ssl-certfile``,
  ``--ssl-keyfile``); without them the gRPC port binds only to a loopback
  address (:func:`check_transport` refuses anything else), since the API key
  travels in the call's metadata.
- **Key**: metadata ``authorization: Bearer <key>`` (what
  ``tritonclient.grpc`` sends with ``headers={"authorization": ...}``).
- **Errors**: the status codes of :mod:`serving.protocols.v2.errors`; a quota
  refusal carries ``retry-after`` (seconds) in its trailing metadata.
- **Limits**: a message larger than ``max_body_bytes`` is refused by gRPC
  itself (RESOURCE_EXHAUSTED); ``SO_REUSEPORT`` is off, so a second server
  cannot silently share the port.
- **Answers**: outputs go in ``raw_output_contents`` (little-endian; BYTES as
  a 4-byte length before each element), which is where Triton's clients read them.

Metrics: the app's ``fedguard_requests`` counter (route
``/inference.GRPCInferenceService/<Method>``, the HTTP status that the gRPC
code stands for) and ``fedguard_predict_duration_seconds`` for ``ModelInfer``;
each call writes one access-log line, as an HTTP request does.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio

from lifecycle.errors import ConfigurationError
from lifecycle.governance.objections import SUBJECT_ID_PATTERN
from lifecycle.settings import is_loopback
from serving import logger
from serving.metrics import ACCESS_KEY
from serving.protocols.v2 import service
from serving.protocols.v2.errors import V2InputError, public_error
from serving.protocols.v2.grpc import inference_pb2 as pb
from serving.protocols.v2.grpc import inference_pb2_grpc as pb_grpc
from serving.protocols.v2.tensors import InferRequest, instances_from_bytes, instances_from_json
from serving.settings import ServingSettings
from serving.state import ServingState

SERVICE = "/inference.GRPCInferenceService/"
GRACE_SECONDS = 5.0
"""How long a stopping server lets calls in flight finish."""
access_logger = logging.getLogger("fedguard.serving.access")
Reply = TypeVar("Reply")


def check_transport(settings: ServingSettings) -> None:
    """Refuse a gRPC port on a non-loopback address without TLS: the key would cross the network in clear.

    Raises
    ------
    ConfigurationError
        Saying to pass a certificate and key, or to bind to loopback.
    """
    if settings.grpc_port is not None and not settings.tls and not is_loopback(settings.host):
        raise ConfigurationError(
            f"the gRPC port would listen on {settings.host} without TLS, sending API keys in clear text; "
            "pass --ssl-certfile/--ssl-keyfile (gRPC uses the same certificate) or bind to 127.0.0.1")


def _bearer(context: grpc.aio.ServicerContext) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == "authorization" and isinstance(value, str):
            scheme, _, credentials = value.partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None


class InferenceServicer:
    """The six RPCs of ``GRPCInferenceService`` that fedguard serves (see the module)."""

    def __init__(self, state: ServingState) -> None:
        self.state = state

    async def _call(self, method: str, context: grpc.aio.ServicerContext, model: str,
                    work: Callable[[dict[str, Any]], Awaitable[Reply]]) -> Reply:
        """Run ``work`` at the protocol's error boundary; count, time and access-log the call."""
        access: dict[str, str] = {}
        scope: dict[str, Any] = {ACCESS_KEY: access}
        started = time.perf_counter()
        status, code = 200, "OK"
        try:
            return await work(scope)
        except Exception as exc:  # noqa: BLE001 - the boundary: public_error logs it (500s with the traceback)
            peer = context.peer() or "?"
            error = public_error(exc, self.state.settings, f"gRPC {method} from {peer}")
            status, code = error.status, error.grpc_code
            if error.retry_after is not None:
                context.set_trailing_metadata((("retry-after", str(error.retry_after)),))
            await context.abort(getattr(grpc.StatusCode, error.grpc_code), error.message)
            raise  # abort raises; this line is never reached
        finally:
            elapsed = time.perf_counter() - started
            label = model if model in self.state.deployments.names() else ""
            metrics = self.state.metrics
            metrics.requests.labels(SERVICE + method, label, str(status)).inc()
            if method == "ModelInfer" and label:
                metrics.predict_latency.labels(label).observe(elapsed)
            access_logger.info("GRPC %s%s %s %.1fms key=%s", SERVICE, method, code, elapsed * 1000.0,
                               access.get("key_id", "-"))

    async def _key(self, scope: dict[str, Any], context: grpc.aio.ServicerContext) -> Any:
        return await service.authenticate(scope, self.state, _bearer(context))

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802 - the RPC's name
        """Liveness: needs no key."""

        async def work(scope: dict[str, Any]) -> Any:
            return pb.ServerLiveResponse(live=True)

        return await self._call("ServerLive", context, "", work)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        """Readiness (a model can answer): needs no key."""

        async def work(scope: dict[str, Any]) -> Any:
            return pb.ServerReadyResponse(ready=service.server_ready(self.state))

        return await self._call("ServerReady", context, "", work)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        """Name, version and extensions of the server (predict key)."""

        async def work(scope: dict[str, Any]) -> Any:
            await self._key(scope, context)
            return pb.ServerMetadataResponse(name=service.SERVER_NAME, version=service.server_version(),
                                             extensions=list(service.EXTENSIONS))

        return await self._call("ServerMetadata", context, "", work)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        """Whether the model answers this key now (predict key; an unknown model is NOT_FOUND)."""

        async def work(scope: dict[str, Any]) -> Any:
            key = await self._key(scope, context)
            ready = await service.model_ready(self.state, key, request.name, service.parse_version(request.version))
            return pb.ModelReadyResponse(ready=ready)

        return await self._call("ModelReady", context, request.name, work)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        """The model's metadata as it answers this key (predict key)."""

        async def work(scope: dict[str, Any]) -> Any:
            key = await self._key(scope, context)
            found = await service.model_metadata(self.state, key, request.name,
                                                 service.parse_version(request.version))
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=found.name, versions=list(found.versions), platform=found.platform,
                inputs=[tensor(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in found.inputs],
                outputs=[tensor(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in found.outputs])

        return await self._call("ModelMetadata", context, request.name, work)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        """Score the input tensor through every guard; the outputs come back raw (predict key)."""

        async def work(scope: dict[str, Any]) -> Any:
            key = await self._key(scope, context)  # before the request is decoded
            decoded = decode_request(request)
            answer = await service.infer(self.state, key, request.model_name,
                                         service.parse_version(request.model_version), decoded)
            reply = pb.ModelInferResponse(model_name=answer.model_name, model_version=answer.model_version,
                                          id=answer.request_id)
            for tensor in answer.outputs:
                reply.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))
                reply.raw_output_contents.append(tensor.to_bytes())
            return reply

        return await self._call("ModelInfer", context, request.model_name, work)


def decode_request(request: Any) -> InferRequest:
    """The :class:`InferRequest` of a ``ModelInferRequest`` (raw FP32 bytes, or ``fp32_contents``).

    Raises
    ------
    V2InputError
        The request is not one fedguard can score; the message says what is wrong.
    """
    if len(request.inputs) != 1:
        raise V2InputError("a fedguard model takes exactly one input tensor, 'input'")
    tensor = request.inputs[0]
    shape = list(tensor.shape)
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1 or tensor.HasField("contents"):
            raise V2InputError("send the input either in raw_input_contents (one entry) or in contents, not both")
        instances = instances_from_bytes(tensor.name, tensor.datatype, shape, request.raw_input_contents[0])
    else:
        instances = instances_from_json(tensor.name, tensor.datatype, shape, list(tensor.contents.fp32_contents))
    outputs = []
    for output in request.outputs:
        if "classification" in output.parameters or "class_count" in output.parameters:
            raise V2InputError("the classification extension is not served; ask for 'label' (and the scores "
                               "the model's output mode allows) instead")
        outputs.append(output.name)
    subject = None
    if "subject_id" in request.parameters:
        subject = request.parameters["subject_id"].string_param
        if not re.fullmatch(SUBJECT_ID_PATTERN, subject):
            raise V2InputError("parameter 'subject_id' must be a string of 1-128 printable ASCII characters")
    return InferRequest(instances, tuple(outputs), request_id=request.id[:128], subject_id=subject)


async def start(state: ServingState) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server of ``state``'s settings on the running loop; the server and the port it bound.

    Raises
    ------
    ConfigurationError
        No TLS on a non-loopback address (:func:`check_transport`), or the port cannot be bound.
    """
    settings = state.settings
    check_transport(settings)
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.so_reuseport", 0),
    ])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(state), server)  # type: ignore[no-untyped-call]
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"{host}:{settings.grpc_port}"
    try:
        if settings.tls:
            assert settings.ssl_certfile is not None  # settings.tls says so
            certificate = settings.ssl_certfile.read_bytes()
            private_key = (settings.ssl_keyfile or settings.ssl_certfile).read_bytes()
            port = server.add_secure_port(address, grpc.ssl_server_credentials([(private_key, certificate)]))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc: "Failed to bind to address ..."
        raise ConfigurationError(f"cannot listen for gRPC on {address}: {exc}; pick a free --grpc-port") from exc
    await server.start()
    logger.info("gRPC on %s:%d (%s)", host, port, "TLS" if settings.tls else "plaintext, loopback")
    return server, port
