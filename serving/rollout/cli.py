"""``fedguard deploy ...``: rollouts and the kill switch, from the operator's shell.

Mounted in ``fedguard/cli.py`` as ``app.add_typer(deploy_app, name="deploy")``.
Every command writes through :class:`~lifecycle.registry.DeploymentStore` (one
transaction with its history entry and audit event, actor ``cli:<user>``);
running servers that share the registry pick the change up within
``deploy_refresh_seconds`` (0.25 s by default). A version a deployment points
at (canary, shadow, ``promote --version``, ``kill --pin``) must verify against
the trusted public key first (exit code 5 otherwise, naming the file), and
governance must allow it (exit code 11 for a tainted version, or one whose
production gates failed without a signed override). Every command takes
``--env NAME``: the deployment of that environment (``default`` otherwise), as
``fedguard serve --env NAME`` serves it.

This module imports neither torch nor FastAPI, so ``fedguard deploy kill``
starts fast.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lifecycle.registry import DeploymentState, DeploymentStore, Registry
from lifecycle.registry.deployments import DEFAULT_ENVIRONMENT, MAX_VERSION, verify_version
from lifecycle.settings import get_settings
from serving.cli import _actor
from serving.settings import build_settings

console = Console()
deploy_app = typer.Typer(
    name="deploy",
    help="Roll model versions out (canary, shadow, blue/green), roll back, and kill or revive a model.",
    no_args_is_help=True,
)
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
ModelArg = Annotated[str, typer.Argument(help="The model's name (see 'fedguard models list').")]
EnvOption = Annotated[str, typer.Option("--env", help="The environment whose deployment to change (as "
                                        "'fedguard serve --env' serves it).")]


def _store(env: str = DEFAULT_ENVIRONMENT) -> tuple[Registry, DeploymentStore]:
    registry = Registry.open(get_settings())
    return registry, DeploymentStore(registry, env)


def _verify(registry: Registry, name: str, version: int) -> None:
    verify_version(registry, name, version, build_settings().public_key)


def _describe(state: DeploymentState) -> str:
    if state.killed:
        served = f"killed, serving only version {state.pinned_version}" if state.kill_mode == "pinned" \
            else "killed, answering 503"
        return served + (f" ({state.kill_reason})" if state.kill_reason else "")
    text = f"stable version {state.stable_version}"
    if state.candidate_mode == "canary":
        text += f", canary version {state.candidate_version} at {state.canary_weight:g}%"
    elif state.candidate_mode == "shadow":
        text += f", shadow version {state.candidate_version}"
    return text


def _show(state: DeploymentState, as_json: bool, verb: str = "") -> None:
    if as_json:
        console.out(json.dumps(state.to_dict()), highlight=False)
        return
    prefix = f"{verb}: " if verb else ""
    where = f" in '{state.environment}'" if state.environment != DEFAULT_ENVIRONMENT else ""
    console.print(f"{prefix}{state.model}{where} (revision {state.revision}): {_describe(state)}", highlight=False)


@deploy_app.command("status")
def status(
    model: Annotated[str | None, typer.Argument(help="One model; default: every registered model.")] = None,
    env: EnvOption = DEFAULT_ENVIRONMENT,
    as_json: JsonOption = False,
) -> None:
    """What each model serves now: stable, canary or shadow, kill switch, traffic shares."""
    registry, store = _store(env)
    if model:
        names = [model]
    elif env == DEFAULT_ENVIRONMENT:
        names = [record.name for record in registry.latest_versions()]
    else:
        names = sorted(store.revisions())  # a named environment serves only what was deployed there
    states = [store.state(name) for name in names]
    if as_json:
        console.out(json.dumps([s.to_dict() for s in states]), highlight=False)
        return
    table = Table("model", "revision", "stable", "candidate", "killed", "shares (% by version)")
    for s in states:
        candidate = f"{s.candidate_mode} {s.candidate_version}" + (
            f" ({s.canary_weight:g}%)" if s.candidate_mode == "canary" else "") if s.candidate_version else "-"
        killed = (s.kill_mode or "") + (f" → {s.pinned_version}" if s.pinned_version else "") if s.killed else "no"
        shares = ", ".join(f"v{v}: {p:g}" for v, p in s.shares().items()) or "none (503)"
        table.add_row(s.model, str(s.revision), str(s.stable_version), candidate, killed, shares)
    console.print(table)


@deploy_app.command("canary")
def canary(
    model: ModelArg,
    version: Annotated[int, typer.Argument(help="The candidate version.", min=1, max=MAX_VERSION)],
    weight: Annotated[float, typer.Option(help="Percent of API keys (sticky) answered by the candidate.",
                                          min=0.0, max=100.0)] = 10.0,
    env: EnvOption = DEFAULT_ENVIRONMENT,
    as_json: JsonOption = False,
) -> None:
    """Answer a sticky WEIGHT percent of API keys with VERSION; raise the weight by running it again."""
    registry, store = _store(env)
    _verify(registry, model, version)
    _show(store.canary(model, version, weight, actor=_actor()), as_json, "canary")


@deploy_app.command("shadow")
def shadow(
    model: ModelArg,
    version: Annotated[int, typer.Argument(help="The candidate version.", min=1, max=MAX_VERSION)],
    env: EnvOption = DEFAULT_ENVIRONMENT,
    as_json: JsonOption = False,
) -> None:
    """Send VERSION a copy of live traffic; its answers are compared (metrics, log), never returned."""
    registry, store = _store(env)
    _verify(registry, model, version)
    _show(store.shadow(model, version, actor=_actor()), as_json, "shadow")


@deploy_app.command("promote")
def promote(
    model: ModelArg,
    version: Annotated[int | None, typer.Option(help="Switch straight to this version (blue/green without a "
                                                     "candidate); default: the current candidate.",
                                                min=1, max=MAX_VERSION)] = None,
    env: EnvOption = DEFAULT_ENVIRONMENT,
    as_json: JsonOption = False,
) -> None:
    """Blue/green: the candidate (or --version) becomes stable in one step; the old stable is kept for rollback."""
    registry, store = _store(env)
    if version is not None:
        _verify(registry, model, version)
    _show(store.promote(model, version, actor=_actor()), as_json, "promoted")


@deploy_app.command("rollback")
def rollback(model: ModelArg, env: EnvOption = DEFAULT_ENVIRONMENT, as_json: JsonOption = False) -> None:
    """Make the previous stable version stable again (dropping any candidate)."""
    _show(_store(env)[1].rollback(model, actor=_actor()), as_json, "rolled back")


@deploy_app.command("abort")
def abort(model: ModelArg, env: EnvOption = DEFAULT_ENVIRONMENT, as_json: JsonOption = False) -> None:
    """Drop the canary or shadow; stable answers everyone."""
    _show(_store(env)[1].abort(model, actor=_actor()), as_json, "aborted")


@deploy_app.command("kill")
def kill(
    model: ModelArg,
    pin: Annotated[int | None, typer.Option(help="Serve only this signed, verified version instead of 503.",
                                            min=1, max=MAX_VERSION)] = None,
    reason: Annotated[str, typer.Option(help="Why, for the history and the audit trail.")] = "",
    env: EnvOption = DEFAULT_ENVIRONMENT,
    as_json: JsonOption = False,
) -> None:
    """Kill switch: every server answers 503 for MODEL within a second (or serves only --pin)."""
    registry, store = _store(env)
    if pin is not None:
        _verify(registry, model, pin)
    _show(store.kill(model, pin=pin, actor=_actor(), reason=reason), as_json, "killed")


@deploy_app.command("revive")
def revive(model: ModelArg, env: EnvOption = DEFAULT_ENVIRONMENT, as_json: JsonOption = False) -> None:
    """Release the kill switch: MODEL serves its stable (and candidate) again."""
    _show(_store(env)[1].revive(model, actor=_actor()), as_json, "revived")


@deploy_app.command("history")
def history(
    model: ModelArg,
    limit: Annotated[int | None, typer.Option(help="Only the last N entries.", min=1)] = None,
    env: EnvOption = DEFAULT_ENVIRONMENT,
    as_json: JsonOption = False,
) -> None:
    """Who did what when, and which version served which share of traffic from then on."""
    entries = _store(env)[1].history(model, limit)
    if as_json:
        console.out(json.dumps([e.to_dict() for e in entries]), highlight=False)
        return
    table = Table("when (UTC)", "revision", "action", "by", "source", "shares (% by version)", "shadow", "reason")
    for e in entries:
        shares: dict[str, Any] = e.shares
        table.add_row(e.created_at.strftime("%Y-%m-%d %H:%M:%S"), str(e.revision), e.action, e.actor, e.source,
                      ", ".join(f"v{v}: {p:g}" for v, p in shares.items()) or "none (503)",
                      str(e.candidate_version) if e.candidate_mode == "shadow" else "-", e.reason)
    console.print(table)
