"""``fedguard audit verify|checkpoint``: check the audit trail from outside the database, sign its head."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lifecycle.registry import Registry

audit_app = typer.Typer(help="Verify the audit trail (hash chain and signed checkpoints); sign a checkpoint.",
                        no_args_is_help=True)
console = Console()

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@audit_app.command("verify")
def verify(
    public_key: Annotated[Path | None, typer.Option(
        "--public-key", help="The audit public key to trust [FEDGUARD_HOME/keys/audit-key.pub.pem]; pass the copy "
                             "you were given, not the one beside the registry you are checking.")] = None,
    as_json: AsJson = False,
) -> None:
    """Check every event's hash link, every checkpoint's signature, and that the registry still holds what was signed.

    Exits 5 naming the first event or checkpoint that does not verify (an
    edited or deleted event, a history rewritten and rehashed, a forged
    checkpoint).
    """
    result = Registry.open().verify_audit(public_key)
    if as_json:
        typer.echo(json.dumps(asdict(result)))
        return
    if not result.checkpoints:
        console.print(f"audit trail verified: {result.events} events, hash chain intact; no signed checkpoint yet "
                      "('fedguard audit checkpoint' signs one)", highlight=False)
        return
    last = result.last_checkpoint or {}
    console.print(f"audit trail verified: {result.events} events, hash chain intact; {result.checkpoints} signed "
                  f"checkpoint(s), the last at event {last.get('event_id')} ({last.get('at')}), audit key "
                  f"{result.key[:16]}", highlight=False)


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
