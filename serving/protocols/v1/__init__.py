"""fedguard's v1 protocol: ``GET /v1/models``, ``POST /v1/models/{name}/predict`` and the key admin route.

- :mod:`~serving.protocols.v1.schemas`: the request and response bodies;
- :mod:`~serving.protocols.v1.routes`: the FastAPI routes, and
  :func:`~serving.protocols.v1.routes.guarded_predict`, every guard after
  authentication, which every protocol calls (v1 through ``answer_predict``,
  :mod:`serving.protocols.v2` through its service);
- :mod:`~serving.protocols.v1.fastpath`: the ASGI fast path in front of the
  predict route for the common, well-formed request.
"""
