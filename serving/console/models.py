"""Models: each version's lineage, gate decisions, consent taint, and its deployments per environment over time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from lifecycle.cli import version_summary
from lifecycle.governance.consent import ConsentStore
from lifecycle.governance.decisions import PRODUCTION, STAGING
from lifecycle.governance.gates import latest_decisions
from lifecycle.governance.stages import StageStore
from lifecycle.registry import DeploymentStore, Registry
from serving.console import charts
from serving.console.context import console_of

router = APIRouter()


@dataclass(frozen=True)
class Timeline:
    """A model's deployments in one environment: the state now, every change, and a chart of it."""

    environment: str
    state: Any
    events: list[dict[str, Any]]
    chart: Any


def _environments(registry: Registry, name: str) -> list[str]:
    found = StageStore(registry).environments(name)
    return sorted(set(found) | {"default"})


def model_overview(registry: Registry) -> list[dict[str, Any]]:
    """Every model: newest version, its deployment in each environment (killed or not), tainted versions."""
    consent = ConsentStore(registry)
    out = []
    for record in registry.latest_versions():
        states = [DeploymentStore(registry, env).state(record.name) for env in _environments(registry, record.name)]
        live = [f"{stage} v{', v'.join(map(str, numbers))} in '{environment}'"
                for environment, by_stage in StageStore(registry).live(record.name).items()
                for stage, numbers in by_stage.items()]
        out.append({"record": record, "states": states, "live": live,
                    "tainted": sorted(consent.tainted_versions(record.name))})
    return out


def _timeline(registry: Registry, name: str, environment: str) -> Timeline:
    store = DeploymentStore(registry, environment)
    stages = StageStore(registry).history(name, environment=environment)
    deployments = store.history(name)
    events: list[dict[str, Any]] = [
        {"when": s.created_at.isoformat(), "what": f"v{s.version} {s.from_stage} → {s.to_stage}"
         + (" (OVERRIDE)" if s.override else ""), "by": s.actor, "reason": s.reason}
        for s in stages]
    events += [{"when": d.created_at.isoformat(), "what": f"deployment {d.action}: "
                + (", ".join(f"v{v}: {p:g}%" for v, p in d.shares.items()) or "none (503)"),
                "by": d.actor, "reason": d.reason} for d in deployments]
    events.sort(key=lambda e: str(e["when"]))
    served: dict[str, list[tuple[float, float]]] = {}
    for index, d in enumerate(deployments, start=1):
        for version, share in d.shares.items():
            served.setdefault(f"v{version}", []).append((float(index), float(share)))
    chart = charts.line_chart(f"Traffic share by version of {name} in '{environment}', per deployment change",
                              served, x_label="deployment change", y_label="% of answers", y_max=100.0)
    return Timeline(environment, store.state(name), events, chart)


def model_detail(registry: Registry, name: str) -> dict[str, Any]:
    """Everything the model page shows (each part through the function its CLI command uses)."""
    consent = ConsentStore(registry)
    tainted = {t.version: t for t in consent.tainted(name)}
    live = StageStore(registry).live(name)
    stages_of: dict[int, list[str]] = {}
    for environment, by_stage in live.items():
        for stage, numbers in by_stage.items():
            for number in numbers:
                stages_of.setdefault(number, []).append(f"{stage} in '{environment}'")
    versions: list[dict[str, Any]] = []
    records = registry.versions(name)
    for record in reversed(records):
        summary = version_summary(record)
        versions.append({"record": record, "summary": summary, "decisions": latest_decisions(registry, name,
                                                                                              record.version),
                         "taint": tainted.get(record.version), "live": stages_of.get(record.version, [])})
    accuracy = {"accuracy": [(float(r.version), float(r.metrics["accuracy"])) for r in records
                             if isinstance(r.metrics.get("accuracy"), (int, float))]}
    return {"name": name, "versions": versions,
            "timelines": [_timeline(registry, name, env) for env in _environments(registry, name)],
            "accuracy_chart": charts.line_chart(f"Accuracy of each version of {name}", accuracy,
                                                x_label="version", y_label="accuracy", y_max=1.0),
            "stages": (STAGING, PRODUCTION), "withdrawals": consent.withdrawals()}


@router.get("/models", response_class=HTMLResponse)
async def models_page(request: Request) -> Response:
    """Every model with its newest version and how each environment serves it."""
    console = console_of(request)
    operator = console.operator(request)
    models = await run_in_threadpool(model_overview, console.registry)
    return console.render(request, "models.html", operator, models=models, title="Models")


@router.get("/models/{name}", response_class=HTMLResponse)
async def model_page(request: Request, name: str) -> Response:
    """One model: environments (state, actions, timeline) and every version (lineage, gates, taint)."""
    console = console_of(request)
    operator = console.operator(request)
    detail = await run_in_threadpool(model_detail, console.registry, name)
    return console.render(request, "model.html", operator, title=f"Model {name}", now=datetime.now(), **detail)


@router.get("/consent", response_class=HTMLResponse)
async def consent_page(request: Request) -> Response:
    """Withdrawals, tainted versions, and the form that records a withdrawal."""
    console = console_of(request)
    operator = console.operator(request)
    store = ConsentStore(console.registry)
    withdrawals = await run_in_threadpool(store.withdrawals)
    tainted = await run_in_threadpool(store.tainted)
    return console.render(request, "consent.html", operator, withdrawals=withdrawals, tainted=tainted,
                          title="Consent")
