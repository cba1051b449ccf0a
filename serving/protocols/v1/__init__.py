"""fedguard's v1 protocol: ``GET /v1/models``, ``POST /v1/models/{name}/predict`` and the key admin route.

- :mod:`~serving.protocols.v1.schemas`: the request and response bodies;
- :mod:`~serving.protocols.v1.routes`: the FastAPI routes, and
  :func:`~serving.protocols.v1.routes.answer_predict`, every guard after
  authentication;
- :mod:`~serving.protocols.v1.fastpath`: the ASGI fast path in front of the
  predict route for the common, well-formed request.
"""
