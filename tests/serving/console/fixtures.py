"""What the console tests share: a registry with runs, ledger charges and policies, a session, a form post."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx

from coordinator.runs.progress import PROGRESS, ProgressLog
from lifecycle.registry import Registry
from privacy.ledger import coordinator_ledger
from privacy.ledger.base import Charge

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def write_run(registry: Registry, run_id: str, rounds: int, *, total: int = 3, done: str | None = None) -> Path:
    """A run folder whose progress log holds ``rounds`` rounds (and a ``done`` event naming ``done``)."""
    folder = registry.home.runs / run_id
    log = ProgressLog(folder / PROGRESS, now=lambda: 1_780_000_000.0)
    if not (folder / PROGRESS).exists():
        (folder / "simulation.json").parent.mkdir(parents=True, exist_ok=True)
        (folder / "simulation.json").write_text(json.dumps({"sites": 3, "rounds": total, "dp_epsilon": 3.0}))
        log("stage", {"stage": "engine"})
    have = sum(1 for e in log.events() if e.get("event") == "round")
    for n in range(have + 1, rounds + 1):
        log("round", round_event(n, total))
    if done is not None:
        name, version = done.split(":")
        log("done", {"model": name, "version": int(version), "accuracy": 0.9})
    return folder


def round_event(n: int, total: int) -> dict[str, Any]:
    return {"round": n, "rounds": total, "accuracy": 0.6 + 0.1 * n, "loss": 1.0 / n, "epsilon_max": 0.8 * n,
            "site_epsilon": None, "sites": 3 if n != 2 else 2, "failed": 0, "rejected": 0,
            "dropped": [] if n != 2 else ["site-c"], "reasons": {}}


def charge_sites(registry: Registry, run_id: str) -> None:
    """Ledger charges for three sites over two rounds of ``run_id``, and a cap on site-a."""
    ledger = coordinator_ledger(registry)
    try:
        for site in ("site-a", "site-b", "site-c"):
            for rnd in (1, 2):
                ledger.record(Charge(site=site, manifest="ab" * 32, run_id=run_id, round=rnd, kind="record",
                                     noise_multiplier=1.1, sample_rate=0.05, steps=40, delta=1e-5), actor="test")
        ledger.set_cap("site-a", 1.0, 1e-5, actor="test")
    finally:
        ledger.close()


def sign_in(client: httpx.Client, key: str) -> httpx.Response:
    """Sign in through the form, as a browser does (same origin)."""
    return client.post("/console/signin", data={"api_key": key}, headers=origin(client))


def origin(client: httpx.Client) -> dict[str, str]:
    return {"Origin": str(client.base_url).rstrip("/")}


def csrf_of(client: httpx.Client, page: str) -> str:
    found = CSRF.search(client.get(page).text)
    assert found is not None, f"no CSRF token on {page}"
    return found.group(1)
