"""Two real uvicorn replicas sharing one SQLite registry: a kill reaches both within 1 s.

`fedguard deploy kill` runs as its own process; the 1 s is measured from its
exit (the registry commit) to the moment both replicas answer 503. Pin and
revive go through one replica's admin routes, and the error-rate cut-out of
one replica must stop the other too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from lifecycle.packaging import publish_model
from lifecycle.registry import DeploymentStore, Registry, VersionRecord
from lifecycle.settings import Settings
from serving.app import create_app
from serving.guards.keys import create_key
from serving.rollout.router import Router
from serving.settings import ServingSettings
from tests.conftest import make_publication
from tests.serving.conftest import bearer
from tests.serving.rollout.test_router import Exploding
from tests.serving.test_integration import serving

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[3]
BODY = {"instances": [[0.5, -1.0, 2.0, 0.0]]}
LIMIT_S = 1.0


@contextmanager
def replica(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a loopback port chosen by the OS; yield its base URL."""
    with serving(app) as port:
        yield f"http://127.0.0.1:{port}"


def cli(home: Path, *args: str) -> None:
    """Run ``fedguard deploy ARGS`` as its own process, as an operator would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGUARD_")}
    env.update(FEDGUARD_HOME=str(home), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "fedguard.cli", "deploy", *args], check=False, env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr


def until(clients: list[httpx.Client], headers: dict[str, str], ok: Callable[[httpx.Response], bool]) -> float:
    """Seconds until every replica's predict answer satisfies ``ok`` (fails after 5 s)."""
    started = time.monotonic()
    pending = list(clients)
    while pending:
        pending = [c for c in pending if not ok(c.post("/v1/models/demo/predict", json=BODY, headers=headers))]
        if time.monotonic() - started > 5:
            pytest.fail(f"{len(pending)} replica(s) still not switched after 5 s")
        time.sleep(0.01)
    return time.monotonic() - started


def version_is(version: int) -> Callable[[httpx.Response], bool]:
    return lambda r: r.status_code == 200 and r.json()["version"] == version


def test_kill_pin_revive_and_cut_out_reach_both_replicas(fedguard_home: Path, published: VersionRecord) -> None:
    settings = ServingSettings(quota_rate=10_000, quota_burst=10_000, kill_min_requests=4)
    first = Registry.open(Settings(home=fedguard_home))
    publish_model(first, make_publication(seed=3))  # demo:2, the newest: both replicas adopt it as stable
    second = Registry.open(Settings(home=fedguard_home))
    apps = [create_app(first, settings), create_app(second, settings)]
    key = bearer(create_key(first, "predict", "replicas"))
    admin = bearer(create_key(first, "admin", "ops"))
    with ExitStack() as stack:
        clients = [stack.enter_context(httpx.Client(base_url=stack.enter_context(replica(app)), timeout=10))
                   for app in apps]
        until(clients, key, version_is(2))

        cli(fedguard_home, "kill", "demo", "--reason", "drill")
        killed = until(clients, key, lambda r: r.status_code == 503 and r.json()["error"]["code"] == "unavailable")
        # The admin routes of one replica reach the other through the registry too.
        assert clients[0].post("/v1/admin/models/demo/kill", json={"pin": 1}, headers=admin).status_code == 200
        pinned = until(clients, key, version_is(1))
        assert clients[0].post("/v1/admin/models/demo/revive", headers=admin).status_code == 200
        revived = until(clients, key, version_is(2))
        log.warning("replicas switched after the change was committed: kill %.3f s, pin %.3f s, revive %.3f s",
                    killed, pinned, revived)
        assert max(killed, pinned, revived) < LIMIT_S, (killed, pinned, revived)

        router: Router = apps[0].state.fedguard.deployments  # test hook: replica 0's stable now fails
        live = router.live["demo"]
        assert live.stable is not None
        router.live["demo"] = dataclasses.replace(live, stable=dataclasses.replace(live.stable, runtime=Exploding()))
        # Failures until they are half the window's outcomes (the window also holds the successes the
        # polling above happened to get, so the count varies), then the cut-out answers 503.
        statuses: list[int] = []
        while len(statuses) < 12 and (not statuses or statuses[-1] != 503):
            statuses.append(clients[0].post("/v1/models/demo/predict", json=BODY, headers=key).status_code)
        assert statuses[:2] == [500, 500] and statuses[-1] == 503, statuses
        assert set(statuses[:-1]) == {500}, statuses
        tripped = until(clients[1:], key, lambda r: r.status_code == 503)
        log.warning("replica 1 refused %.3f s after replica 0's error-rate cut-out", tripped)
        assert tripped < LIMIT_S
    history = DeploymentStore(first).history("demo")
    assert [(e.action, e.source, e.actor.split(":")[0]) for e in history] == [
        ("adopt", "serve", "service"), ("kill", "operator", "user"), ("kill", "operator", "apikey"),
        ("revive", "operator", "apikey"), ("kill", "error-rate", "serve")]
    assert first.verify_audit_chain() > 0
    first.engine.dispose()
    second.engine.dispose()
