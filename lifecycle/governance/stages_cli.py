"""``fedguard models promote|demote|history|approve|approvals`` and ``fedguard operator init|show``.

The ``models`` commands are mounted on ``lifecycle.cli.models_app`` through the
``extra`` mechanism of ``fedguard/cli.py``'s ``Entry``; ``operator`` is an entry
of its own. Refusals propagate as :class:`~lifecycle.errors.FedguardError`
for the top-level CLI to print as one line: 11 refused by governance (the
failing criteria named), 2 bad argument, 4 no such model or version, 5 an
approval that does not verify. Nothing heavy (torch, FastAPI) is imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lifecycle.errors import ConfigurationError, StateError
from lifecycle.governance.decisions import PRODUCTION, STAGES, STAGING
from lifecycle.governance.operator import default_key_path, init_key, load_key, os_actor, public_path
from lifecycle.registry import DeploymentStore, Registry, parse_ref

console = Console()
warnings = Console(stderr=True)


def _warn_approvers(registry: Registry, name: str, fingerprint: str | None = None) -> None:
    """Say plainly on stderr when any valid approver key counts, or when ``fingerprint``'s approval will not."""
    from lifecycle.governance.policies import current_policy

    policy = current_policy(registry, name)
    if not policy.approvers:
        warnings.print(f"[yellow]warning: the policy of '{name}' lists no approvers, so an approval or override by "
                       "ANY valid approver key counts; restrict it with approvers = [\"FINGERPRINT\", ...] in the "
                       f"policy ('fedguard policy set {name} FILE')[/yellow]", highlight=False)
    elif fingerprint is not None and not policy.allows(fingerprint):
        warnings.print(f"[yellow]warning: key {fingerprint} is not in the approvers of '{name}''s policy: this "
                       "approval will not count[/yellow]", highlight=False)
operator_app = typer.Typer(
    name="operator",
    help="Create and show your Ed25519 approver key, which signs approvals and overrides.",
    no_args_is_help=True,
)
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
EnvOption = Annotated[str, typer.Option("--env", help="The environment (a clinic, a region).")]
KeyOption = Annotated[Path | None, typer.Option(
    "--key", help="Your approver key [default: $FEDGUARD_OPERATOR_KEY or ~/.config/fedguard/approver-key.pem].")]


def _ref(ref: str) -> tuple[str, int]:
    name, version = parse_ref(ref)
    if version is None:
        raise ConfigurationError(f"name the version: '{name}:N' (see 'fedguard models show {name}')")
    return name, version


def _emit(data: Any) -> None:
    console.out(json.dumps(data, default=str), highlight=False)


def promote(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION.")],
    to: Annotated[str, typer.Option("--to", help=f"The stage: {STAGING} or {PRODUCTION}.")],
    env: EnvOption = "default",
    override: Annotated[bool, typer.Option("--override", help="Sign an override of failing gates with your "
                                           "approver key (needs --reason; audited as stage.override).")] = False,
    reason: Annotated[str, typer.Option(help="Why (required with --override; signed and audited).")] = "",
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Promote a version to staging or production in an environment, if its gates pass (exit 11 otherwise)."""
    from lifecycle.governance.stages import Override, StageStore

    name, version = _ref(ref)
    signed = None
    if override:
        if not reason.strip():
            raise ConfigurationError("--override needs --reason TEXT: an override is signed and audited with it")
        signed = Override(load_key(key), reason)
    elif reason:
        raise ConfigurationError("--reason goes with --override (a plain promotion records the gate decision)")
    registry = Registry.open()
    result = StageStore(registry).promote(name, version, to=to, environment=env, actor=os_actor(),
                                          override=signed)
    if result.approvals:
        _warn_approvers(registry, name)
    if as_json:
        _emit(result.to_dict())
        return
    failing = "; ".join(r.describe_failures() for r in result.evaluated if not r.passed) or "tainted lineage"
    how = "[bold red]OVERRIDDEN[/bold red] (failing: " + escape(failing) + ")" \
        if result.override else "gates passed"
    console.print(f"promoted {name}:{version} from {result.from_stage} to {result.to_stage} in '{env}': {how}",
                  highlight=False)
    if override and not result.override:
        console.print("the gates passed, so no override was recorded", highlight=False)
    if result.approvals:
        console.print(f"approvals used: {', '.join(a[:16] + '…' for a in result.approvals)}", highlight=False)
    if result.replaced is not None:
        console.print(f"version {result.replaced} goes back to staging in '{env}'", highlight=False)
    if result.deployment is not None:
        state = result.deployment
        served = f"serving version {state.stable_version} (revision {state.revision})"
        if state.killed:
            served = f"[yellow]still killed ({escape(state.kill_reason or str(state.kill_mode))}): release it with " \
                     f"'fedguard deploy revive {name} --env {env}'[/yellow]"
        console.print(f"deployment in '{env}': {served}", highlight=False)


def demote(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION.")],
    env: EnvOption = "default",
    to: Annotated[str | None, typer.Option("--to", help="The stage to go down to [default: one stage down].")]
    = None,
    reason: Annotated[str, typer.Option(help="Why, for the history and the audit trail.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Demote a version in an environment; leaving production takes it off serving there."""
    from lifecycle.governance.stages import StageStore

    name, version = _ref(ref)
    result = StageStore(Registry.open()).demote(name, version, environment=env, to=to, actor=os_actor(),
                                                reason=reason)
    if as_json:
        _emit(result.to_dict())
        return
    console.print(f"demoted {name}:{version} from {result.from_stage} to {result.to_stage} in '{env}'",
                  highlight=False)
    state = result.deployment
    if state is not None and state.killed:
        console.print(f"[yellow]deployment in '{env}' killed (503): {escape(state.kill_reason)}[/yellow]",
                      highlight=False)
    elif state is not None:
        console.print(f"deployment in '{env}' serves version {state.stable_version}"
                      + (f" (version {result.restored} restored to production)" if result.restored else ""),
                      highlight=False)


def history(
    name: Annotated[str, typer.Argument(help="The model's name.")],
    env: Annotated[str | None, typer.Option("--env", help="One environment [default: every one].")] = None,
    as_json: JsonOption = False,
) -> None:
    """Stage moves and deployment events of a model, per environment, oldest first."""
    from lifecycle.governance.stages import StageStore

    registry = Registry.open()
    stages = StageStore(registry)
    environments = [env] if env is not None else stages.environments(name)
    report = {e: {"stages": [r.to_dict() for r in stages.history(name, environment=e)],
                  "deployments": [r.to_dict() for r in DeploymentStore(registry, e).history(name)]}
              for e in environments}
    if as_json:
        _emit({"model": name, "live": stages.live(name), "environments": report})
        return
    if not environments:
        console.print(f"{name} has no stage move or deployment yet", highlight=False)
    for environment, events in report.items():
        table = Table("when (UTC)", "what", "by", "reason", title=f"{name} in '{environment}'")
        rows: list[tuple[str, str, str, str]] = []
        for s in events["stages"]:
            what = f"v{s['version']} {s['from_stage']} → {s['to_stage']}"
            rows.append((s["created_at"], "[bold red]OVERRIDE[/bold red] " + what if s["override"] else what,
                         s["actor"], s["reason"]))
        for d in events["deployments"]:
            shares = ", ".join(f"v{v}: {p:g}%" for v, p in d["shares"].items()) or "none (503)"
            rows.append((d["created_at"], f"deployment {d['action']}: {shares}", d["actor"], d["reason"]))
        for when, what, by, why in sorted(rows, key=lambda r: r[0]):
            table.add_row(when[:19].replace("T", " "), what, escape(by), escape(why))
        console.print(table)


def approve(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION.")],
    stage: Annotated[str, typer.Option("--stage", help=f"The stage approved: {STAGING} or {PRODUCTION}.")]
    = PRODUCTION,
    env: EnvOption = "default",
    key: KeyOption = None,
    reason: Annotated[str, typer.Option(help="Why (signed with the approval).")] = "",
    as_json: JsonOption = False,
) -> None:
    """Sign an approval of a version for a stage in an environment with your approver key."""
    from lifecycle.governance.approvals import approve as sign

    name, version = _ref(ref)
    approver = load_key(key)
    registry = Registry.open()
    record = sign(registry, name, version, stage=stage, environment=env, key=approver, reason=reason,
                  actor=os_actor())
    _warn_approvers(registry, name, approver.fingerprint)
    if as_json:
        _emit(record.to_dict())
        return
    console.print(f"approval #{record.id}: {escape(approver.name or 'approver')} ({approver.fingerprint[:16]}…) "
                  f"approves {name}:{version} for {stage} in '{env}'", highlight=False)


def approvals(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION.")],
    public_key: Annotated[Path | None, typer.Option(
        "--public-key", help="Verify every approval against this approver public key (PEM) instead of the key "
        "stored with it: an approval by another key fails.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Re-verify every signed approval and override of a version, and say who approved what (exit 5 if one fails)."""
    from lifecycle.governance.approvals import approvals as stored

    name, version = _ref(ref)
    pem = None
    if public_key is not None:
        try:
            pem = public_key.read_text()
        except OSError as exc:
            raise StateError(f"cannot read the public key {public_key}: {exc}") from exc
    records = stored(Registry.open(), name, version, public_key_pem=pem)
    if as_json:
        _emit([{**r.to_dict(), "verified": True} for r in records])
        return
    if not records:
        console.print(f"{name}:{version} has no signed approval", highlight=False)
        return
    table = Table("#", "kind", "stage", "environment", "approver", "signed at (UTC)", "used", "reason",
                  title=f"signed approvals of {name}:{version} (every signature verified)")
    for r in records:
        kind = "[bold red]override[/bold red]" if r.kind == "override" else r.kind
        table.add_row(str(r.id), kind, r.stage, r.environment, escape(f"{r.approver_name} {r.approver[:16]}…"),
                      r.signed_at[:19].replace("T", " "), "yes" if r.used else "no", escape(r.reason))
    console.print(table)


@operator_app.command("init")
def operator_init(
    name: Annotated[str, typer.Option(help="Your name as approvals show it, e.g. 'Dr A. Jones'.")] = "",
    key: KeyOption = None,
    force: Annotated[bool, typer.Option(help="Replace an existing key (approvals it signed stay verifiable "
                                             "only with its old public key).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Create your Ed25519 approver key (0600) and its public key beside it; print its fingerprint."""
    path = key or default_key_path()
    created = init_key(path, name=name, force=force)
    info = {"key": str(path), "public_key": str(public_path(path)), "name": created.name,
            "fingerprint": created.fingerprint}
    if as_json:
        _emit(info)
        return
    console.print(f"approver key written to {path} (readable by you only)\n"
                  f"public key: {public_path(path)}\nfingerprint (SHA-256): {created.fingerprint}", highlight=False)
    console.print("Share the public key file (never the key) with whoever must verify your approvals, and read "
                  "them the fingerprint by another channel; they check with 'fedguard models approvals NAME:V "
                  f"--public-key {public_path(path).name}'.", highlight=False)


@operator_app.command("show")
def operator_show(key: KeyOption = None, as_json: JsonOption = False) -> None:
    """Show your approver key's name, fingerprint and public key."""
    loaded = load_key(key)
    path = loaded.path or default_key_path()
    info = {"key": str(path), "public_key": str(public_path(path)), "name": loaded.name,
            "fingerprint": loaded.fingerprint, "public_key_pem": loaded.public_pem}
    if as_json:
        _emit(info)
        return
    console.print(f"approver     {escape(loaded.name or '(no name)')}\nkey          {path}\n"
                  f"fingerprint  {loaded.fingerprint}", highlight=False)
    console.out(loaded.public_pem, highlight=False)


__all__ = ["STAGES", "approvals", "approve", "demote", "history", "operator_app", "promote"]
