"""Runs over the deployment runtime: job files, submission, progress, checkpoints and resume.

A run has a fedguard run id (``run-id`` in the run config), stable across
coordinator restarts; everything about it lives in ``FEDGUARD_HOME/runs/<run-id>/``:
``job.toml`` (the merged job), ``flower-runs.json`` (the Flower runs it was
submitted as), ``progress.jsonl`` (events the ServerApp writes and
``fedguard run launch`` follows), ``checkpoint/`` (weights and state after
the last aggregated round) and ``outcome.json``.
"""

from __future__ import annotations

from pathlib import Path

from lifecycle.errors import ConfigurationError


def run_dir(home_runs: Path, run_id: str) -> Path:
    """``FEDGUARD_HOME/runs/<run-id>``, refusing ids that could escape it."""
    if not run_id or not run_id.replace("-", "").isalnum():
        raise ConfigurationError(f"run id '{run_id}' is not valid: use letters, digits and hyphens")
    return home_runs / run_id
