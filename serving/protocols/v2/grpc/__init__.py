"""The Open Inference Protocol's gRPC service: the ``.proto``, its generated modules and the server.

``inference.proto`` is wire-compatible with KServe's ``grpc_predict_v2.proto``
and Triton's ``grpc_service.proto`` for the RPCs served; ``inference_pb2*``
are generated from it by ``regenerate.sh`` (committed, so that serving needs
no code generator at run time, and in a private descriptor pool, so that a
process may also import ``tritonclient.grpc``). :mod:`.server` is the server.
"""
