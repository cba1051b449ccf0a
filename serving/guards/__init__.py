"""The request guards: everything that stands between a caller and a model's answer.

One module per guard, in the order a predict request meets them:

- :mod:`~serving.guards.auth`: the ``require(scope)`` dependency (``PredictKey``,
  ``AdminKey``) that authenticates the bearer key;
- :mod:`~serving.guards.body`: the key before the body, and a JSON body's
  nesting depth bounded before it is parsed (``GuardedRoute``);
- :mod:`~serving.guards.keys` and :mod:`~serving.guards.keycache`: API keys,
  stored only as hashes, and the short-lived cache of authenticated ones;
- :mod:`~serving.guards.objections`: subjects who objected to a model (the
  right to object), refused before anything reads the instances;
- :mod:`~serving.guards.ranges`: the operator's per-feature value ranges;
- :mod:`~serving.guards.quotas`: per-key rate limits and daily budgets (a
  stateful service: memory and Redis stores behind one contract);
- :mod:`~serving.guards.killswitch`: the per-model error window and the 503 of
  a killed model;
- :mod:`~serving.guards.extraction`: per-key model-extraction signals and the
  throttle they trigger;
- :mod:`~serving.guards.outputs`: output hardening (labels only unless the
  operator configured rounded scores).

The package itself imports nothing, so that importing one guard (the CLI
imports :mod:`~serving.guards.keys`) does not load FastAPI or torch.
"""
