"""fedguard serving: registered, signed models behind an authenticated HTTP API.

The tier assumes its callers may be hostile (DESIGN.md §5): every model route
needs an API key stored only as a hash, a model is served only after its
signature verifies against the trusted key, requests are checked against the
feature schema signed into the model's ML-BOM, only labels leave the server
unless the operator configured rounded scores for a model
(:mod:`serving.outputs`), and every key is held to a rate limit and a daily
query budget (:mod:`serving.quotas`). Import :func:`serving.app.create_app` for the ASGI app and
:mod:`serving.cli` for the ``fedguard keys`` / ``fedguard serve`` commands;
this module stays light (no FastAPI or torch import) so that the CLI starts fast.
"""

import logging

logger = logging.getLogger("fedguard.serving")
