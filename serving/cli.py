"""``fedguard keys ...`` and ``fedguard serve``: the serving tier's commands.

This module exports :data:`keys_app` (a Typer group) and :func:`serve` (a
command function) for ``fedguard/cli.py`` to mount::

    app.add_typer(keys_app, name="keys")
    app.command("serve")(serve)

Errors are not caught here: a :class:`~lifecycle.errors.FedguardError`
propagates to the top-level CLI, which prints it as one line and exits with
its code (a model whose signature does not verify: exit 5). Output goes through
Rich consoles; anything a script reads (``--json``) goes to stdout unwrapped,
and warnings go to stderr so they never corrupt it.
"""

from __future__ import annotations

import copy
import json
import logging
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from lifecycle.audit import actors
from lifecycle.errors import NotFoundError
from lifecycle.registry import Registry
from lifecycle.settings import get_settings, is_loopback
from serving.guards.keys import KeyInfo, create_key, list_keys, parse_duration, revoke_key
from serving.settings import ServingSettings, build_settings
from serving.worker import ACCESS_LINE_FORMAT, settle_heap

if TYPE_CHECKING:
    from serving.console.sources import ConsoleSources

console = Console()
err_console = Console(stderr=True)

keys_app = typer.Typer(
    name="keys",
    help="Create, list and revoke API keys for the serving tier (stored hashed).",
    no_args_is_help=True,
)


class Scope(StrEnum):
    """Key scopes offered on the command line (``admin`` implies ``predict`` and ``viewer``)."""

    predict = "predict"
    admin = "admin"
    viewer = "viewer"


def _registry() -> Registry:
    return Registry.open(get_settings())


def _actor() -> str:
    """Who runs the command, for the audit trail: the OS user as an identity (``user:alice``, or ``user:uid-N``)."""
    return actors.actor()


def _emit_json(data: Any) -> None:
    console.out(json.dumps(data, default=str), highlight=False)


def _key_dict(info: KeyInfo) -> dict[str, Any]:
    return {"key_id": info.key_id, "scope": info.scope, "name": info.name, "revoked": info.revoked,
            "created_at": info.created_at.isoformat(),
            "expires_at": info.expires_at.isoformat() if info.expires_at else None}


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


@keys_app.command("create")
def create(
    scope: Annotated[Scope, typer.Option(help="What the key may do: 'predict'; 'viewer' (read the operator console); "
                                       "or 'admin' (implies both, and changes things).")]
    = Scope.predict,
    name: Annotated[str, typer.Option(help="A label to recognise the key by (who or what uses it).")] = "",
    expires_in: Annotated[str | None, typer.Option(
        help="Lifetime of the key: e.g. 30d, 12h or 90m (days, hours, minutes). Default: never expires.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new key as JSON on stdout.")] = False,
) -> None:
    """Create an API key and print it once; only its hash is stored."""
    lifetime = parse_duration(expires_in) if expires_in is not None else None
    created = create_key(_registry(), scope.value, name, actor=_actor(), expires_in=lifetime)
    warning = "Store this key now: it cannot be shown again (fedguard keeps only its hash)."
    if as_json:
        _emit_json({**_key_dict(created.info), "key": created.key})
        err_console.print(f"[yellow]{warning}[/yellow]")
        return
    console.print(f"Created API key [bold]{created.info.key_id}[/bold] with scope '{scope.value}'"
                  + (f" ({escape(name)})" if name else "") + ":", markup=True, highlight=False)
    console.print(created.key, soft_wrap=True, markup=False, highlight=False)
    if created.info.expires_at is not None:
        console.print(f"It expires at {_when(created.info.expires_at)}.", highlight=False)
    err_console.print(f"[yellow]{warning}[/yellow]")


@keys_app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Print the keys as JSON on stdout.")] = False,
) -> None:
    """List API keys (ids, scopes, names, revocation, expiry); secrets are never stored."""
    infos = list_keys(_registry())
    if as_json:
        _emit_json([_key_dict(info) for info in infos])
        return
    table = Table("key id", "scope", "name", "revoked", "created", "expires")
    now = datetime.now(UTC)
    for info in infos:
        if info.expires_at is None:
            expires = "never"
        else:
            expires = _when(info.expires_at) + (" (expired)" if info.expired(now) else "")
        table.add_row(info.key_id, info.scope, escape(info.name), "yes" if info.revoked else "no",
                      info.created_at.strftime("%Y-%m-%d %H:%M"), expires)
    console.print(table)


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (16 hex digits, from 'fedguard keys list').")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    """Revoke an API key; servers refuse it from their next request on."""
    info = revoke_key(_registry(), key_id, actor=_actor())
    if as_json:
        _emit_json(_key_dict(info))
        return
    console.print(f"Revoked API key {info.key_id} (scope '{info.scope}').", highlight=False)


ACCESS_FORMAT = ACCESS_LINE_FORMAT


def uvicorn_options(settings: ServingSettings) -> dict[str, Any]:
    """Keyword arguments for :func:`uvicorn.run` / :class:`uvicorn.Config` from ``settings``.

    The ``Server`` header is off: naming the server software only helps an
    attacker pick exploits. Uvicorn's access log is off too: the app writes
    its own (``fedguard.serving.access``), with path templates instead of raw
    paths, configured by :func:`log_config`.
    """
    return {
        "host": settings.host,
        "port": settings.port,
        "ssl_certfile": str(settings.ssl_certfile) if settings.ssl_certfile else None,
        "ssl_keyfile": str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
        "server_header": False,
        "log_level": "info",
        "access_log": False,
        "log_config": log_config(settings),
    }


def log_config(settings: ServingSettings) -> dict[str, Any]:
    """The logging configuration of uvicorn, with fedguard's access log added (unless turned off).

    uvicorn applies its configuration with :func:`logging.config.dictConfig`
    when it starts, and that closes every handler configured before it: the
    access log's handler must be part of this configuration, not attached
    ahead of ``uvicorn.run``. The access log (one line per request, on
    stderr) has a handler of its own whatever ``FEDGUARD_LOG_LEVEL`` says
    (WARNING by default would drop it). The handler is plain, not Rich (a
    Rich-rendered line costs about 1 ms, a plain one tens of microseconds),
    and lines are written in batches by a background thread
    (:class:`serving.worker.BatchedLineWriter`): stderr may be a pipe that a
    slow log collector lets fill up.
    """
    import uvicorn.config  # here, not at module level: 'fedguard keys ...' starts without the server

    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    if settings.access_log:
        config["formatters"]["fedguard-access"] = {"()": "serving.worker.AccessFormatter", "fmt": ACCESS_FORMAT}
        config["handlers"]["fedguard-access"] = {
            "()": "serving.worker.BatchedLineWriter", "stream": "ext://sys.stderr", "formatter": "fedguard-access",
        }
        config["loggers"]["fedguard.serving.access"] = {
            "handlers": ["fedguard-access"], "level": "INFO", "propagate": False,
        }
    return config


def _attach_log_handler() -> None:
    """Show the serving log on stderr unless the top-level CLI configured logging already.

    Log records skip the caller's frame, thread and process look-ups, which
    no fedguard format shows (the "Optimization" section of Python's logging
    HOWTO): that halves the cost of each access-log line.
    """
    package = logging.getLogger("fedguard")
    if not package.handlers and not logging.getLogger().handlers:
        package.addHandler(RichHandler(console=err_console, show_path=False))
        package.setLevel(logging.INFO)
    logging._srcfile = None  # documented switch: no sys._getframe() walk per record
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind [env FEDGUARD_SERVE_HOST, default 127.0.0.1].")]
    = None,
    port: Annotated[int | None, typer.Option(help="Port to bind [env FEDGUARD_SERVE_PORT, default 8000].")] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="PEM certificate: terminate TLS in uvicorn.")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="PEM private key of --ssl-certfile.")] = None,
    env: Annotated[str | None, typer.Option(
        "--env", help="The environment to serve: only the models promoted to production there "
        "[env FEDGUARD_SERVE_ENVIRONMENT, default 'default': every registered model].")] = None,
    grpc_port: Annotated[int | None, typer.Option(
        help="Also serve the Open Inference Protocol v2 over gRPC on this port, same host, same process, "
        "TLS with --ssl-certfile/--ssl-keyfile (KServe's convention: 8081; 0: a free port, logged) "
        "[env FEDGUARD_SERVE_GRPC_PORT, default: no gRPC].")] = None,
) -> None:
    """Serve every registered model as deployed, after verifying each signature.

    A model never deployed before is served at its newest version, recorded
    as stable; 'fedguard deploy' changes what is served from then on. With
    --env NAME, only the models promoted to production in that environment
    are served, as its deployments say.

    The Open Inference Protocol v2 (KServe, Triton) is served over HTTP beside
    /v1 at /v2/...; with --grpc-port, over gRPC too.

    A model whose signature does not verify stops the command before it binds
    (exit code 5, naming the file that differs).
    """
    serve_with(None, host=host, port=port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, env=env,
               grpc_port=grpc_port)


def serve_with(console_sources: ConsoleSources | None, *, host: str | None = None, port: int | None = None,
               ssl_certfile: Path | None = None, ssl_keyfile: Path | None = None, env: str | None = None,
               grpc_port: int | None = None) -> None:
    """:func:`serve`, with the operator console reading ``console_sources``.

    ``fedguard serve`` runs this through :mod:`fedguard.console`, which builds
    the sources from the packages serving may not import (runs, the privacy
    ledger, sites: DESIGN §3); ``None`` serves the console's registry pages only.
    """
    settings = build_settings(host=host, port=port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                              environment=env, grpc_port=grpc_port)
    settings.check_files()
    if not is_loopback(settings.host) and not settings.tls:
        err_console.print(
            f"[bold yellow]Warning:[/bold yellow] binding to {settings.host}, which is not loopback, without TLS: "
            "API keys and inputs would cross the network in clear text. Terminate TLS in front of this "
            "server (a reverse proxy or load balancer) or pass --ssl-certfile/--ssl-keyfile.",
            highlight=False,
        )
    _attach_log_handler()
    import uvicorn

    from serving.app import create_app  # ONNX Runtime and FastAPI load only when serving
    from serving.state import ServingState

    app = create_app(_registry(), settings, console_sources=console_sources)
    state: ServingState = app.state.fedguard
    if not state.models:
        raise NotFoundError(
            f"no model is registered in '{get_settings().home}'; publish one first, or point "
            "FEDGUARD_HOME / FEDGUARD_DATABASE_URL at the registry to serve"
        )
    table = Table("model", "version", "features", "artifact",
                  title=f"Verified and serving in environment '{settings.environment}'")
    for model in sorted(state.models.values(), key=lambda m: m.name):
        table.add_row(model.name, str(model.version), str(model.num_features), model.digest[:12])
    err_console.print(table)
    scheme = "https" if settings.tls else "http"
    where = f"[{settings.host}]" if ":" in settings.host else settings.host
    err_console.print(f"Listening on {scheme}://{where}:{settings.port} (OpenAPI at /docs)", highlight=False)
    if settings.grpc_port is not None:  # the port it bound is known once the app's lifespan started it
        transport = "TLS" if settings.tls else "plaintext, loopback only"
        app.state.announce_grpc = lambda bound: err_console.print(
            f"gRPC (Open Inference Protocol v2) on {where}:{bound} ({transport})", highlight=False)
    settle_heap()
    uvicorn.run(app, **uvicorn_options(settings))
