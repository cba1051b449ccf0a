"""``fedguard watermark verify NAME:VERSION --server URL``: black-box verification through a running server.

The owner's secret file goes to the server's admin route
(:mod:`serving.protocols.v1.watermark`) for that one call; the server checks
it against the commitment in the version's signed ML-BOM, runs the triggers
through the model it serves and audits the call. The admin key is read from
``FEDGUARD_API_KEY`` (never an argument: command lines are visible to every
user of the machine). Exit code 5 when the watermark is not detected.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from lifecycle.errors import AuthError, ConfigurationError, NotFoundError, StateError, WatermarkError

watermark_app = typer.Typer(help="Verify a model's watermark through a running fedguard server (admin key).",
                            no_args_is_help=True)


@watermark_app.command("verify")
def verify(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION of the served model.")],
    server: Annotated[str, typer.Option("--server", help="Base URL of the fedguard server.")],
    secret: Annotated[Path, typer.Option("--secret", help="The watermark secret file (FEDGUARD_HOME/keys/"
                                                          "watermarks/<commitment>.safetensors).")],
    ca: Annotated[Path | None, typer.Option("--ca", help="CA bundle for the server's TLS certificate.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Run the secret trigger set through the served model NAME:VERSION; exit 5 unless the watermark is detected."""
    result = verify_remote(ref, server, secret, os.environ.get("FEDGUARD_API_KEY", ""), ca)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(f"watermark of {result['model']}:{result['version']} detected through {server}: trigger accuracy "
                   f"{result['trigger_accuracy']:.2f} ({result['correct']}/{result['n']}), p={result['p_value']:.1e}")
    if not result["verified"]:
        raise WatermarkError(f"watermark not detected through {server}: {result['correct']}/{result['n']} triggers, "
                             f"p-value {result['p_value']:.3g} is not below {result['threshold']:.3g}")


def verify_remote(ref: str, server: str, secret: Path, api_key: str, ca: Path | None = None) -> dict[str, Any]:
    """POST the secret to the admin route and return its answer (raises on an HTTP error, never returns one)."""
    import httpx

    name, _, version = ref.partition(":")
    if not name or not version.isdigit():
        raise ConfigurationError(f"'{ref}' is not NAME:VERSION; name the served version, e.g. demo:3")
    if not api_key:
        raise AuthError("no admin key: set FEDGUARD_API_KEY to an admin-scoped key ('fedguard keys create --scope "
                        "admin')")
    try:
        body = {"secret": base64.b64encode(secret.read_bytes()).decode()}
    except FileNotFoundError as exc:
        raise NotFoundError(f"watermark secret '{secret}' does not exist; restore it from the keys backup") from exc
    url = f"{server.rstrip('/')}/v1/admin/models/{name}/versions/{version}/watermark/verify"
    try:
        response = httpx.post(url, json=body, headers={"Authorization": f"Bearer {api_key}"}, timeout=60,
                              verify=str(ca) if ca else True)
    except httpx.HTTPError as exc:
        raise StateError(f"cannot reach {server} ({exc}); check the URL and that the server runs") from exc
    if response.status_code != 200:
        try:
            message = str(response.json()["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        errors: dict[int, type[Exception]] = {401: AuthError, 403: AuthError, 404: NotFoundError}
        raise errors.get(response.status_code, ConfigurationError)(
            f"the server refused the verification ({response.status_code}): {message}")
    answer: dict[str, Any] = response.json()
    return answer
