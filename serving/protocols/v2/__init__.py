"""The Open Inference Protocol v2 (KServe's and Triton's "predict protocol v2"), beside fedguard's v1.

- :mod:`~serving.protocols.v2.rest`: the ``/v2/...`` HTTP routes (JSON, and
  Triton's binary tensor extension);
- :mod:`~serving.protocols.v2.grpc.server`: ``inference.GRPCInferenceService``
  over gRPC with TLS (``fedguard serve --grpc-port``);
- :mod:`~serving.protocols.v2.service`: the operations both call, through the
  v1 guards (:func:`serving.protocols.v1.routes.guarded_predict`);
- :mod:`~serving.protocols.v2.tensors`: the input tensor a model takes and the
  output tensors its hardened answer becomes;
- :mod:`~serving.protocols.v2.errors`: statuses and gRPC codes by error class.

Specification: https://kserve.github.io/website/docs/concepts/architecture/data-plane/v2-protocol
(REST and gRPC), and Triton's binary tensor data extension.
"""
