"""Screenshots of every console page, for ``docs/console.md``: ``python -m fedguard.console_screenshots --out DIR``.

Builds a demonstration home in a temporary folder (a federation with three
enrolled sites, one revoked; two model versions, the second refused by a
gate; a finished and a running simulation with their ledger charges), serves
the console on loopback with uvicorn, and drives Debian's headless Chromium
through selenium (``apt-get install chromium chromium-driver``; ``selenium``
comes with the ``dev`` extra). Writes one PNG per page at 1280×800, the kill
banner, and the run page at a phone's width (390 px). Nothing is fetched from
the network. Lives in the ``fedguard`` package because the demonstration
uses the coordinator's provisioning and the privacy ledger (DESIGN §3).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from fedguard.console import full_sources
from lifecycle.architecture import DataSchema, ModelSpec, build_model, set_standardization
from lifecycle.governance.policies import PolicyStore
from lifecycle.governance.stages import StageStore
from lifecycle.packaging import Publication, publish_model
from lifecycle.registry import DeploymentStore, Registry, SiteRecord
from lifecycle.settings import Settings

SITES = ("st-marys", "northfield", "riverside")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--proxy-server=http://127.0.0.1:9",
         "--proxy-bypass-list=127.0.0.1")


def _publication(accuracy: float, seed: int) -> Publication:
    torch.manual_seed(seed)
    spec = ModelSpec(in_features=4, num_classes=2, hidden=(8,))
    model = build_model(spec)
    set_standardization(model, torch.zeros(4), torch.ones(4))
    sites = [SiteRecord(name, 1200 + 150 * i, f"{i + 7:064x}", 2.1 + 0.2 * i, 1e-5, 5) for i, name in enumerate(SITES)]
    return Publication(
        name="cardio", model=model, spec=spec,
        schema=DataSchema(features=("age", "bp", "chol", "hr"), labels=("no", "yes")),
        run_id=uuid.uuid4().hex, run_config={"rounds": 5}, rounds=5, sites=sites,
        training={"rounds": 5, "aggregation": "fedavg", "secure_aggregation": "secagg+",
                  "dp": {"target_epsilon": 3.0, "delta": 1e-5},
                  "sites": [{"site": s.site, "num_examples": s.num_examples, "data_manifest": s.data_manifest,
                             "dp": {"epsilon": s.epsilon}} for s in sites]},
        watermark={"scheme": "none"}, metrics={"accuracy": accuracy},
    )


def _run(registry: Registry, run_id: str, rounds: int, total: int, model: str | None) -> None:
    """A run folder, and each site's ledger charges for its rounds; the progress log's ε is the ledger's."""
    from coordinator.runs.progress import PROGRESS, ProgressLog
    from privacy.ledger import coordinator_ledger
    from privacy.ledger.base import Charge, evaluate

    folder = registry.home.runs / run_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "simulation.json").write_text(json.dumps({"dataset": "breast-cancer", "sites": 3, "rounds": total,
                                                        "dp_epsilon": 3.0, "secure_agg": "secagg+", "seed": 7}))
    log = ProgressLog(folder / PROGRESS)
    log("stage", {"stage": "engine"})
    ledger = coordinator_ledger(registry)
    charged: dict[str, list[Charge]] = {name: [] for name in SITES}
    try:
        for n in range(1, rounds + 1):
            dropped = ["riverside"] if n == 3 else []
            for i, name in enumerate(SITES):
                if name not in dropped:
                    charge = Charge(name, f"{i + 7:064x}", run_id, n, "record", 1.3 - 0.05 * i, 0.04, 40, 1e-5)
                    ledger.record(charge, actor="user:ops")
                    charged[name].append(charge)
            spent = max(evaluate(found, None)[0] for found in charged.values() if found)
            log("round", {"round": n, "rounds": total, "accuracy": 0.62 + 0.05 * n, "loss": 1.0 / n,
                          "epsilon_max": spent, "site_epsilon": None, "sites": 3 - len(dropped), "failed": 0,
                          "rejected": 0, "dropped": dropped, "reasons": {}})
    finally:
        ledger.close()
    if model:
        name, version = model.split(":")
        log("done", {"model": name, "version": int(version), "accuracy": 0.86})


def build_demo(home: Path) -> Registry:
    """The demonstration home the screenshots show."""
    from coordinator.provisioning import FederationLayout, SiteRegistry, init_federation
    from privacy.ledger import coordinator_ledger

    registry = Registry.open(Settings(home=home))
    init_federation(home, "demo-consortium", endpoint="coordinator.example:9093")
    sites = SiteRegistry(registry, FederationLayout.under(home))
    with tempfile.TemporaryDirectory() as bundles:
        for name in SITES:
            sites.enroll(name, Path(bundles) / f"{name}.bundle", actor="user:ops")
    ledger = coordinator_ledger(registry)
    try:
        ledger.set_cap("*", 8.0, 1e-5, actor="user:ops")
        ledger.set_cap("northfield", 4.0, 1e-5, actor="user:ops")
    finally:
        ledger.close()
    _run(registry, "sim-20261205-091500-a1b2c3", 5, 5, "cardio:1")  # the runs (and their charges) come first,
    _run(registry, "sim-20261205-140200-d4e5f6", 3, 5, None)  # so the trail's newest events are governance's
    publish_model(registry, _publication(0.86, 0))
    StageStore(registry).promote("cardio", 1, to="production", environment="default", actor="user:ops")
    publish_model(registry, _publication(0.81, 1))
    PolicyStore(registry).set("cardio", "[production]\nmin-accuracy = 0.85\n", actor="user:ops")
    try:
        StageStore(registry).promote("cardio", 2, to="production", environment="default", actor="user:ops")
    except Exception:  # noqa: BLE001 - the refusal is what the page shows
        pass
    sites.revoke("riverside", actor="user:ops", reason="left the consortium")
    registry.checkpoint(every=1)
    return registry


def _serve(app: Any) -> tuple[Any, str]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


def shoot(out: Path) -> list[Path]:
    """Write the screenshots into ``out``; return their paths."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from serving.app import create_app
    from serving.guards.keys import create_key
    from serving.settings import ServingSettings

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="fedguard-console-demo-") as folder:
        registry = build_demo(Path(folder) / "home")
        key = create_key(registry, "admin", "ops-alice", actor="user:ops").key
        server, url = _serve(create_app(registry, ServingSettings(), console_sources=full_sources(registry)))
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in (*FLAGS, f"--user-data-dir={Path(folder) / 'profile'}"):
            options.add_argument(flag)
        browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            browser.set_window_size(1280, 800)

            def snap(name: str, path: str, *, full: bool = True) -> None:
                browser.get(f"{url}/console/{path}")
                time.sleep(0.3)  # fonts and the first htmx poll settle; only for the picture
                if full:
                    height = browser.execute_script("return document.documentElement.scrollHeight")
                    browser.set_window_size(browser.get_window_size()["width"], min(max(800, height), 2400))
                target = out / f"{name}.png"
                browser.save_screenshot(str(target))
                written.append(target)
                browser.set_window_size(browser.get_window_size()["width"], 800)

            snap("signin", "signin", full=False)
            browser.find_element(By.ID, "api_key").send_keys(key)
            browser.find_element(By.ID, "signin").click()
            for name, path in (("runs", "runs"), ("run", "runs/sim-20261205-140200-d4e5f6"), ("privacy", "privacy"),
                               ("models", "models"), ("model", "models/cardio"), ("consent", "consent"),
                               ("audit", "audit"), ("sites", "sites")):
                snap(name, path)
            DeploymentStore(registry).kill("cardio", actor="user:ops", reason="wrong answers reported by a clinic")
            snap("killed", "models", full=False)
            DeploymentStore(registry).revive("cardio", actor="user:ops")
            browser.set_window_size(390, 844)
            snap("run-narrow", "runs/sim-20261205-140200-d4e5f6", full=False)
        finally:
            browser.quit()
            server.should_exit = True
    return written


def main() -> None:
    """Parse ``--out`` and write the screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures/console"), help="Folder for the PNGs.")
    args = parser.parse_args()
    from rich.console import Console

    console = Console()
    for path in shoot(args.out):
        console.print(str(path), highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
