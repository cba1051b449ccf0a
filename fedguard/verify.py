"""``fedguard models verify``: the signature, then the registry against the signed ML-BOM, then the watermark.

Lives in the ``fedguard`` package because it needs both ``lifecycle``
(signatures, registry) and ``watermark`` (secrets, schemes), and lifecycle may
import nothing of ours.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from lifecycle.bom import read_bom
from lifecycle.errors import WatermarkError
from lifecycle.registry import Registry, check_lineage
from lifecycle.signing import verify_model


def verify_version(registry: Registry, ref: str, public_key: Path | None = None) -> dict[str, Any]:
    """Verify the signature, the registry's lineage, then the watermark of ``ref``; raise on the first failure.

    The lineage check compares the registry's rows (sites, their ε and data
    manifests, metrics, watermark, run) with the ML-BOM whose signature has just
    verified, so that an edit of the registry alone cannot pass
    (:class:`lifecycle.registry.LineageMismatch`, exit 5, naming the field). The
    watermark secret is looked up only after that, by a commitment both agree on.
    """
    record = registry.resolve(ref)
    key = public_key or registry.public_key_path()
    verify_model(record.artifact.model_dir, record.artifact.signature_path, key)
    result: dict[str, Any] = {"model": record.name, "version": record.version, "signature": {"verified": True}}
    result["lineage"] = check_lineage(record, read_bom(record.artifact.model_dir))
    mark = record.watermark
    if mark.get("scheme", "none") == "none":
        result["watermark"] = {"scheme": "none", "verified": False}
        return result
    from lifecycle.artifacts import load_model
    from watermark import create_scheme
    from watermark.secret import load_secret, secret_path

    path = secret_path(registry.home.keys, str(mark["commitment"]))
    if not path.exists():
        raise WatermarkError(
            f"the watermark secret for {record.ref} is not at '{path}'; restore FEDGUARD_HOME/keys from a backup"
        )
    secret = load_secret(path, expected=str(mark["commitment"]))
    model, _ = load_model(record.artifact.model_dir)
    verification = create_scheme(str(mark["scheme"])).verify(model, secret)
    result["watermark"] = {
        "scheme": mark["scheme"], "verified": True, "trigger_accuracy": verification.trigger_accuracy,
        "p_value": verification.p_value,
    }
    return result


def verify(
    ref: Annotated[str, typer.Argument(help="NAME or NAME:VERSION (default: newest).")],
    public_key: Annotated[Path | None, typer.Option(
        "--public-key", help="Signer's public key PEM (default: this home's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Verify a model's signature (naming any file that differs), its registry lineage, then its watermark."""
    result = verify_version(Registry.open(), ref, public_key)
    if as_json:
        typer.echo(json.dumps(result))
        return
    console = Console()
    console.print(f"[green]✓[/green] signature of {result['model']}:{result['version']} verifies")
    console.print(f"[green]✓[/green] registry agrees with the signed ML-BOM ({result['lineage']['sites']} sites: "
                  "ε, data manifests; metrics; watermark; run)")
    mark = result["watermark"]
    if mark["verified"]:
        console.print(f"[green]✓[/green] watermark {mark['scheme']} detected: trigger accuracy "
                      f"{mark['trigger_accuracy']:.2f}, p={mark['p_value']:.1e}")
    else:
        console.print("[yellow]![/yellow] this model carries no watermark")
