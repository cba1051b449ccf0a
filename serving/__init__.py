"""fedguard serving: registered, signed models behind an authenticated HTTP API.

The tier assumes its callers may be hostile (DESIGN.md §5): every model route
needs an API key stored only as a hash, a model is served only after its
signature verifies against the trusted key, requests are checked against the
feature schema signed into the model's ML-BOM, only labels leave the server
unless the operator configured rounded scores for a model, and every key is
held to a rate limit and a daily query budget.

Where things live:

- :mod:`serving.app` (the app factory), :mod:`serving.state` (what a handler
  needs), :mod:`serving.settings`, :mod:`serving.errors` (the error boundary),
  :mod:`serving.models` and :mod:`serving.inference` (verified models and
  their forward pass), :mod:`serving.metrics`, :mod:`serving.cli`
  (``fedguard keys`` / ``fedguard serve``);
- :mod:`serving.openapi`: the OpenAPI document, made to state the served
  models' limits and the one error shape;
- :mod:`serving.guards`: authentication, the JSON body guard, keys, quotas,
  ranges, kill switch, extraction guard, output hardening;
- :mod:`serving.rollout`: the router (canary, shadow, blue/green), its admin
  routes and ``fedguard deploy``;
- :mod:`serving.protocols`: the inference protocols (``v1``);
- :mod:`serving.drift`: the drift monitor and its route.

This module stays light (no FastAPI or torch import) so that the CLI starts fast.
"""

import logging

logger = logging.getLogger("fedguard.serving")
