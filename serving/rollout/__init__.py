"""Rollouts: which signed version of a model answers, and how an operator changes it.

- :mod:`~serving.rollout.router`: the per-request decision (stable, canary,
  shadow, killed or pinned) and the refresh from the shared registry;
- :mod:`~serving.rollout.routes`: the admin HTTP routes
  (``/v1/admin/models/{name}/...``);
- :mod:`~serving.rollout.cli`: ``fedguard deploy ...``, the same actions from
  the shell (no FastAPI or torch import).

Both write through :class:`lifecycle.registry.DeploymentStore`, so every change
is one transaction with its history entry and audit event.
"""
