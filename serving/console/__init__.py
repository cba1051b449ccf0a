"""The operator console: a self-hosted web page over runs, privacy budgets, models, gates, consent, audit and sites.

Served by the serving tier under ``/console`` (``fedguard serve``), or alone
(``fedguard console``) on a coordinator that serves no model. Pages are
rendered on the server with Jinja2; htmx (vendored in ``static/``, no CDN)
refreshes a running run's page; charts are SVG drawn on the server
(:mod:`serving.console.charts`), so the console works offline in a hospital
network. Operators sign in once with an API key (:mod:`serving.console.session`):
``viewer`` keys read, ``admin`` keys act. Every action goes through the same
function the CLI calls and is audited with the operator's key id.

Layout: :mod:`~serving.console.app` (the app, sign-in, errors),
:mod:`~serving.console.context` (shared state), a module per page
(:mod:`~serving.console.runs`, :mod:`~serving.console.privacy`,
:mod:`~serving.console.models`, :mod:`~serving.console.audit_page`,
:mod:`~serving.console.sites`), :mod:`~serving.console.actions` (every
state-changing form), :mod:`~serving.console.sources` (what the ``fedguard``
package supplies), :mod:`fedguard.console_screenshots` (the documentation's figures).

Importing this package imports nothing heavy (``fedguard keys`` starts
without FastAPI); the app is in :mod:`serving.console.app`.
"""
