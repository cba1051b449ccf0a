"""The inference protocols the serving tier speaks, one folder per protocol and version.

:mod:`serving.protocols.v1` is fedguard's own (``/v1/models/{name}/predict``);
:mod:`serving.protocols.v2` the Open Inference Protocol v2 (KServe, Triton), REST and gRPC.
A protocol folder holds only the wire: its routes, its request and response
schemas and any fast path; authentication, quotas, routing and output shaping
are shared, in :mod:`serving.guards` and :mod:`serving.rollout`, so that every
protocol is guarded the same way.
"""
