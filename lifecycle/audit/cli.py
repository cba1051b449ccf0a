"""``fedguard audit verify|checkpoint``: check the audit trail from outside the database, sign its head."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from lifecycle.registry import Registry

if TYPE_CHECKING:
    from lifecycle.audit.witness import WitnessVerified

audit_app = typer.Typer(help="Verify the audit trail (hash chain and signed checkpoints); sign a checkpoint.",
                        no_args_is_help=True)
console = Console()

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@audit_app.command("verify")
def verify(
    public_key: Annotated[Path | None, typer.Option(
        "--public-key", help="The audit public key to trust [FEDGUARD_HOME/keys/audit-key.pub.pem]; pass the copy "
                             "you were given, not the one beside the registry you are checking.")] = None,
    witness: Annotated[list[Path] | None, typer.Option(
        "--witness", help="A site's witnessed checkpoints ('fedguard client witness --out'): the registry must "
                          "still extend each one (repeatable).")] = None,
    as_json: AsJson = False,
) -> None:
    """Check every event's hash link, every checkpoint's signature, and that the registry still holds what was signed.

    Exits 5 naming the first event or checkpoint that does not verify (an
    edited or deleted event, a history rewritten and rehashed, a forged
    checkpoint). With ``--witness``, also every checkpoint a site witnessed:
    that catches a history rewritten by whoever holds the audit key and
    re-signed the coordinator's own checkpoint file.
    """
    registry = Registry.open()
    result = registry.verify_audit(public_key)
    witnessed = _verify_witnesses(registry, witness or [], public_key)
    if as_json:
        typer.echo(json.dumps({**asdict(result), "witnesses": [asdict(w) for w in witnessed]}))
        return
    if not result.checkpoints:
        console.print(f"audit trail verified: {result.events} events, hash chain intact; no signed checkpoint yet "
                      "('fedguard audit checkpoint' signs one)", highlight=False)
    else:
        last = result.last_checkpoint or {}
        console.print(f"audit trail verified: {result.events} events, hash chain intact; {result.checkpoints} "
                      f"signed checkpoint(s), the last at event {last.get('event_id')} ({last.get('at')}), audit "
                      f"key {result.key[:16]}", highlight=False)
    for w in witnessed:
        seen = w.last_checkpoint or {}
        console.print(f"witness {w.file}: {w.checkpoints} checkpoint(s), all extended by the registry"
                      + (f", the last at event {seen.get('event_id')} ({seen.get('at')})" if seen else "")
                      + (f"; [red]{w.alarms} alarm(s) the site recorded[/red]" if w.alarms else "")
                      + (f"; {w.skipped} line(s) the site did not trust, not checked" if w.skipped else ""),
                      highlight=False, soft_wrap=True)


def _verify_witnesses(registry: Registry, files: list[Path], public_key: Path | None) -> list[WitnessVerified]:
    """Each witness file checked against the registry (:func:`lifecycle.audit.witness.verify_witness`)."""
    if not files:
        return []
    from sqlmodel import Session

    from lifecycle.audit.checkpoints import PUBLIC_KEY_NAME, load_public_key
    from lifecycle.audit.witness import verify_witness

    key = load_public_key(public_key or registry.home.keys / PUBLIC_KEY_NAME)
    with Session(registry.engine) as session:
        return [verify_witness(session, path, key) for path in files]


@audit_app.command("checkpoint")
def checkpoint(as_json: AsJson = False) -> None:
    """Sign the chain's head now into FEDGUARD_HOME/audit/checkpoints.jsonl (done by itself every N events)."""
    registry = Registry.open()
    signed = registry.checkpoint(every=1, strict=True)
    if as_json:
        typer.echo(json.dumps(asdict(signed.checkpoint) if signed is not None else None))
        return
    if signed is None:
        console.print("nothing to sign: no event since the last checkpoint", highlight=False)
        return
    console.print(f"checkpoint signed: event {signed.checkpoint.event_id}, {signed.checkpoint.events} events, "
                  f"audit key {signed.checkpoint.key[:16]} -> {registry.checkpoint_log.path}", highlight=False)


@audit_app.command("trace")
def trace(
    model: Annotated[str, typer.Option("--model", help="The registered model to walk back.")],
    env: Annotated[str | None, typer.Option(
        "--env", help="The environment [the one the model is deployed in; with --version: all].")] = None,
    at: Annotated[str | None, typer.Option(
        "--at", help="The time asked about: ISO 8601 with Z or an offset (2026-12-03T14:00Z), or a date alone "
                     "(00:00 UTC) [now].")] = None,
    version: Annotated[int | None, typer.Option("--version", help="Tell the story of this version instead.")] = None,
    html_out: Annotated[Path | None, typer.Option(
        "--html", help="Write the self-contained HTML report here (for people).")] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Write the JSON report here ('-': standard output), same content.")] = None,
) -> None:
    """What was serving in an environment at a time (or one version's story), with the evidence behind it.

    Writes an HTML report for compliance staff and/or JSON; each report's
    SHA-256 is recorded as an 'audit.trace.exported' event. Without --html or
    --json, prints the summary. Exit 4: unknown model, version or environment;
    exit 2: a malformed time or one before the first audit event.
    """
    from lifecycle.audit import actors
    from lifecycle.audit.report import complete, export
    from lifecycle.audit.trace import gather, parse_instant

    moment = parse_instant(at) if at is not None else None
    registry = Registry.open()
    report = complete(gather(registry, model, environment=env, at=moment, version=version))
    actor = actors.actor()
    for fmt, path in (("html", html_out), ("json", json_out)):
        if path is None:
            continue
        to_stdout = fmt == "json" and str(path) == "-"
        content, digest = export(registry, report, fmt, None if to_stdout else path, actor=actor)
        if to_stdout:
            typer.echo(content.decode(), nl=False)
        else:
            Console(stderr=True).print(f"{fmt.upper()} report written to {path} (SHA-256 {digest}, recorded in "
                                       "the audit trail)", highlight=False, soft_wrap=True)
    if html_out is None and json_out is None:
        _print_summary(report)


def _print_summary(report: dict[str, object]) -> None:
    """The report's summary on the terminal: one marked line per finding."""
    marks = {"ok": "[green]✔[/green]", "bad": "[red]✘[/red]", "warn": "[yellow]⚠[/yellow]", "info": "[blue]ℹ[/blue]"}
    console.print(f"[bold]{escape(str(report['title']))}[/bold]", highlight=False)
    findings = report["summary"]
    assert isinstance(findings, list)
    for finding in findings:
        console.print(f"{marks[finding['status']]} {escape(finding['text'])}", highlight=False, soft_wrap=True)
    console.print("(--html FILE or --json FILE writes the whole report, with its evidence)", highlight=False)
