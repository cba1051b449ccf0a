"""``fedguard console`` and ``fedguard serve``: the operator console with everything it reads.

The console lives in ``serving`` (:mod:`serving.console`), which may not import
the coordinator, the privacy ledger or the simulations (DESIGN §3). This
module, in the package that assembles the command, may: it implements the
console's sources (:mod:`serving.console.sources`) with those packages' own
functions (the ones ``fedguard run status``, ``fedguard privacy ledger`` and
``fedguard site ...`` call) and hands them to the serving app.

``fedguard console`` serves the console alone on the coordinator's machine,
with every source; ``fedguard serve`` is :func:`serving.cli.serve` with the
sources a serving replica may read without importing the training side
(:func:`serving_sources`: the privacy ledger; models, gates, consent, audit
and the kill switch come from the registry itself).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from lifecycle.errors import NotFoundError
from lifecycle.registry import Registry
from lifecycle.settings import get_settings
from serving import cli as serving_cli
from serving.console.sources import BudgetRow, ChargeView, ConsoleSources, RunView, SiteView
from serving.settings import build_settings

_MARKUP = re.compile(r"\[/?[a-z ]+\]")


class Runs:
    """Runs under ``FEDGUARD_HOME/runs`` through :mod:`coordinator.runs` (progress log, job file, outcome)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.root = registry.home.runs

    def runs(self) -> list[RunView]:
        if not self.root.is_dir():
            return []
        folders = [p for p in self.root.iterdir() if p.is_dir() and p.name.replace("-", "").isalnum()]
        folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        return [self._view(p, with_sites=False) for p in folders[:200]]

    def run(self, run_id: str) -> RunView:
        from coordinator.runs import run_dir

        folder = run_dir(self.root, run_id)
        if not folder.is_dir():
            raise NotFoundError(f"no run '{run_id}' under {self.root}; see the Runs page")
        return self._view(folder, with_sites=True)

    def _view(self, folder: Path, *, with_sites: bool) -> RunView:
        from coordinator.runs import render
        from coordinator.runs.progress import PROGRESS, TERMINAL, ProgressLog

        events = ProgressLog(folder / PROGRESS).events()
        outcome = _json(folder / "outcome.json")
        terminal = next((e for e in reversed(events) if e.get("event") in TERMINAL), None)
        status = str(terminal["event"]) if terminal else ("done" if outcome.get("model") else "running")
        model = None
        if terminal is not None and terminal.get("event") == "done":
            model = f"{terminal.get('model')}:{terminal.get('version')}"
        elif outcome.get("model"):
            model = f"{outcome['model']}:{outcome.get('version')}"
        last = events[-1] if events and events[-1].get("event") != "round" else None  # older lines are stale
        message = _MARKUP.sub("", render.line(last) or "") if last else ""
        config: dict[str, Any] = {}
        if (folder / "job.toml").is_file():
            config = tomllib.loads((folder / "job.toml").read_text(encoding="utf-8"))
        config = config or _json(folder / "simulation.json") or dict(outcome.get("config") or {})
        started = datetime.fromtimestamp(float(events[0]["time"]), UTC) if events and "time" in events[0] else None
        return RunView(run_id=folder.name, kind="simulation" if folder.name.startswith("sim-") else "deployment",
                       status=status, rounds=tuple(e for e in events if e.get("event") == "round"),
                       config={k: v for k, v in config.items() if not isinstance(v, (dict, list))}, model=model,
                       message=message, started=started,
                       site_epsilon=self._site_epsilon(folder.name) if with_sites else {})

    def _site_epsilon(self, run_id: str) -> dict[str, float]:
        from privacy.ledger import coordinator_ledger
        from privacy.ledger.base import evaluate

        ledger = coordinator_ledger(self.registry)
        try:
            charges = [c for c in ledger.charges() if c.run_id == run_id]
        finally:
            ledger.close()
        sites = sorted({c.site for c in charges})
        return {site: evaluate([c for c in charges if c.site == site], None)[0] for site in sites}


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class Ledger:
    """The coordinator's privacy ledger, as ``fedguard privacy ledger`` reads it."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def budgets(self) -> list[BudgetRow]:
        from privacy.ledger import coordinator_ledger

        ledger = coordinator_ledger(self.registry)
        try:
            rows = ledger.summary()
        finally:
            ledger.close()
        return [BudgetRow(r.site, r.manifest, r.kind, r.runs, r.charges, r.epsilon, r.delta, r.accountant,
                          r.epsilon_cap, r.epsilon_remaining) for r in rows]

    def charges(self, site: str | None = None) -> list[ChargeView]:
        from privacy.ledger import coordinator_ledger

        ledger = coordinator_ledger(self.registry)
        try:
            found = ledger.charges(site)
        finally:
            ledger.close()
        return [ChargeView(c.site, c.manifest, c.run_id, c.round, c.kind, c.noise_multiplier, c.sample_rate,
                           c.steps, c.delta, c.accountant, c.created_at) for c in found]


class Sites:
    """The federation's enrolment through :class:`coordinator.provisioning.SiteRegistry` (``fedguard site ...``)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def _registry(self) -> Any:
        from coordinator.provisioning import FederationLayout, SiteRegistry

        layout = FederationLayout.under(self.registry.home.root)
        layout.read_config()  # a clear error when there is no federation yet
        return SiteRegistry(self.registry, layout)

    def sites(self) -> list[SiteView]:
        from coordinator.provisioning import FederationLayout

        if not FederationLayout.under(self.registry.home.root).exists():
            return []
        seen: dict[str, datetime] = {}
        for charge in Ledger(self.registry).charges():
            if charge.created_at is not None and (charge.site not in seen or charge.created_at > seen[charge.site]):
                seen[charge.site] = charge.created_at
        return [SiteView(i.name, i.status, i.cert_serial, i.issued_at, i.not_after, i.credentials_issued,
                         i.revoked_at, seen.get(i.name)) for i in self._registry().sites()]

    def _bundle(self, issue: Any, name: str, actor: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="fedguard-bundle-") as folder:
            out = Path(folder) / f"{name}.bundle"
            issue(name, out, actor=actor)
            return out.read_bytes()  # the folder and the file go with the with-block

    def enroll(self, name: str, *, actor: str) -> bytes:
        return self._bundle(self._registry().enroll, name, actor)

    def rotate(self, name: str, *, actor: str) -> bytes:
        return self._bundle(self._registry().rotate, name, actor)

    def revoke(self, name: str, *, actor: str, reason: str) -> None:
        self._registry().revoke(name, actor=actor, reason=reason)

    def enrolled(self) -> list[str]:
        from coordinator.consent_cli import enrolled_sites

        return enrolled_sites(self.registry)


class Retrain:
    """Checks the retrain plan here (so a refusal shows at once), then runs ``fedguard retrain`` in the background.

    The child gets this registry's home and database whatever the console's
    environment says, runs in its own session (closing the browser or the
    console does not stop it), and is kept in :attr:`launched` so that a
    finished one is reaped, not left a zombie of a long-lived console.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.launched: list[subprocess.Popen[bytes]] = []

    def __call__(self, ref: str, *, actor: str) -> str:
        from coordinator.retrain import plan
        from lifecycle import audit
        from lifecycle.registry import parse_ref

        name, version = parse_ref(ref)
        planned = plan(self.registry, name, version)
        log = self.registry.home.runs / f"retrain-{name}-{version}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.launched = [p for p in self.launched if p.poll() is None]
        env = os.environ.copy()
        env.update(FEDGUARD_HOME=str(self.registry.home.root),
                   FEDGUARD_DATABASE_URL=self.registry.engine.url.render_as_string(hide_password=False))
        with self.registry.transaction() as session:  # audited before it starts: nothing runs unrecorded
            audit.record(session, "console.retrain", actor=actor, subject=ref,
                         details={"mode": planned.mode, "kept": list(planned.kept), "log": str(log)})
        with log.open("ab") as handle:
            child = subprocess.Popen([sys.executable, "-m", "fedguard.cli", "retrain", ref, "--without-withdrawn",
                                      "--no-follow"], stdout=handle, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        self.launched.append(child)
        return (f"retraining {ref} without the withdrawn data ({planned.mode}, sites kept: "
                f"{', '.join(planned.kept)}; process {child.pid}); its run appears on the Runs page; log: {log}")


def full_sources(registry: Registry) -> ConsoleSources:
    """Every source, over ``registry`` and its home."""
    return ConsoleSources(runs=Runs(registry), ledger=Ledger(registry), sites=Sites(registry),
                          retrain=Retrain(registry))


def serving_sources(registry: Registry) -> ConsoleSources:
    """What a serving replica's console reads: the privacy ledger (in the shared registry), nothing of the coordinator.

    The serving process imports no training code (``tests/serving/test_process_imports.py``);
    runs, sites and retraining live on the coordinator's machine, whose console
    (``fedguard console``) shows them.
    """
    return ConsoleSources(ledger=Ledger(registry))


@functools.wraps(serving_cli.serve)
def serve(**options: Any) -> None:
    """Serve every registered model as deployed, after verifying each signature."""
    serving_cli.serve_with(serving_sources(Registry.open(get_settings())), **options)


def console(
    host: Annotated[str | None, typer.Option(help="Address to bind [env FEDGUARD_SERVE_HOST, default 127.0.0.1].")]
    = None,
    port: Annotated[int | None, typer.Option(help="Port to bind [env FEDGUARD_SERVE_PORT, default 8000].")] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="PEM certificate: terminate TLS in uvicorn.")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="PEM private key of --ssl-certfile.")] = None,
) -> None:
    """Serve the operator console alone (no model) at /console: runs, privacy, models, audit, sites."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import RedirectResponse

    from serving.console.app import mount_console

    settings = build_settings(host=host, port=port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    settings.check_files()
    registry = Registry.open(get_settings())
    app = FastAPI(title="fedguard console", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=303)

    mount_console(app, registry, settings, full_sources(registry))
    scheme = "https" if settings.tls else "http"
    serving_cli.err_console.print(f"Operator console on {scheme}://{settings.host}:{settings.port}/console/ "
                                  "(sign in with a viewer or admin key: 'fedguard keys create --scope viewer')",
                                  highlight=False)
    serving_cli._attach_log_handler()
    uvicorn.run(app, **serving_cli.uvicorn_options(settings))
