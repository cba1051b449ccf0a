"""``fedguard coordinator init|data|start`` and ``fedguard site enroll|rotate|revoke|list|he-keys|withdraw``.

Mounted by ``fedguard/cli.py``::

    app.add_typer(coordinator_app, name="coordinator")
    app.add_typer(site_app, name="site")

Errors propagate as :class:`~lifecycle.errors.FedguardError` to the top-level
CLI (one line, documented exit code). Anything a script reads (``--json``)
goes to stdout; progress and warnings go to stderr.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Column, Table

from coordinator.consent_cli import withdraw
from coordinator.provisioning import FederationLayout, SiteRegistry, init_federation
from coordinator.provisioning.federation import DEFAULT_GATEWAY_PORT, DEFAULT_SUPERLINK_PORT
from coordinator.provisioning.sites import contract_digest
from lifecycle.audit import actors
from lifecycle.errors import ConfigurationError, StateError
from lifecycle.registry import Registry
from lifecycle.settings import get_settings

console = Console()
err_console = Console(stderr=True)

coordinator_app = typer.Typer(help="Create and run a federation's coordinator (SuperLink behind a mutual-TLS gateway).",
                              no_args_is_help=True)
site_app = typer.Typer(help="Enrol sites, rotate or revoke their credentials, list them, record consent withdrawals.",
                       no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _layout() -> FederationLayout:
    return FederationLayout.under(get_settings().home)


def _sites() -> SiteRegistry:
    layout = _layout()
    layout.read_config()  # a clear error when there is no federation yet
    return SiteRegistry(Registry.open(get_settings()), layout)


def _actor() -> str:
    """Who runs the command, for the audit trail: the OS user as an identity (``user:alice``, or ``user:uid-N``)."""
    return actors.actor()


@coordinator_app.command("init")
def init(
    federation: Annotated[str, typer.Option("--federation", help="Federation name (goes into every certificate).")],
    host: Annotated[list[str] | None, typer.Option("--host", help="Host name sites dial (repeatable).")] = None,
    address: Annotated[list[str] | None, typer.Option("--address", help="IP address sites dial (repeatable).")]
    = None,
    gateway_address: Annotated[str, typer.Option(help="Address the gateway binds.")] = "0.0.0.0",
    gateway_port: Annotated[int, typer.Option(help="The one port open to sites.")] = DEFAULT_GATEWAY_PORT,
    superlink_port: Annotated[int, typer.Option(help="The SuperLink's port on 127.0.0.1.")] = DEFAULT_SUPERLINK_PORT,
    endpoint: Annotated[str | None, typer.Option(help="host:port written into bundles [first --host/--address].")]
    = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing federation (sites must re-enrol).")]
    = False,
) -> None:
    """Create the federation CA, the coordinator's TLS certificate and config.toml under FEDGUARD_HOME/federation."""
    layout = init_federation(get_settings().home, federation, hosts=tuple(host or ()), addresses=tuple(address or ()),
                             gateway_address=gateway_address, gateway_port=gateway_port,
                             superlink_port=superlink_port, endpoint=endpoint, force=force)
    Registry.open(get_settings())  # create/migrate the registry that will hold the sites
    config = layout.read_config()
    err_console.print(f"federation [bold]{config.federation}[/bold] created in {layout.root}\n"
                      f"  CA certificate  {layout.ca_cert}\n  TLS certificate {layout.server_cert}\n"
                      f"  sites will dial {config.endpoint}; open TCP {config.gateway_port} inbound, nothing else",
                      highlight=False)


@coordinator_app.command("data")
def data(
    data_file: Annotated[Path, typer.Option("--data", help="The coordinator's held-out file (CSV or Parquet), "
                                            "in the contract's column names.")],
    schema: Annotated[Path, typer.Option("--schema", help="The contract: site-schema TOML plus record-id and "
                                         "per-column unit (docs/deployment.md).")],
    out: Annotated[Path | None, typer.Option("--out", help="Reference folder to write "
                                             "[FEDGUARD_HOME/federation/reference].")] = None,
    as_json: JsonOption = False,
) -> None:
    """Declare the federation's data contract and write the held-out reference set (every problem at once; exit 2)."""
    from coordinator.provisioning.data import declare_contract  # numpy, torch: only for this command
    from federation.schema import SchemaValidationError

    sites = _sites()
    try:
        declared = declare_contract(sites.layout, sites.registry, data_file, schema, out=out, actor=_actor())
    except SchemaValidationError as exc:
        if as_json:
            typer.echo(json.dumps(exc.report.to_dict()))
        else:
            console.print(exc.report.summary(), highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(declared.to_dict()))
        return
    c, enrolled = declared.contract, len(sites.sites())
    record_id = f", record id '{c.record_id}'" if c.record_id else ""
    lines = [f"data contract declared: {len(c.features)} features, label '{c.label}' "
             f"({', '.join(c.label_values)}){record_id}; digest {c.digest[:16]}",
             f"  contract       {declared.contract_path}",
             f"  reference set  {declared.reference}/ (test.csv: {declared.rows} rows, schema.json, contract.json)"]
    if declared.changed and enrolled:
        lines.append(f"  the contract changed: {enrolled} site(s) enrolled earlier hold the previous one in their "
                     "bundle; runs carry the new one, 'fedguard site rotate NAME' refreshes a bundle")
    lines.append("next: 'fedguard site enroll NAME --out NAME.bundle' (each bundle carries the contract); "
                 + ("jobs with an empty data-dir evaluate on this reference set" if out is None else
                    f"set data-dir = \"{declared.reference}\" in the job"))
    err_console.print("\n".join(lines), highlight=False, soft_wrap=True, markup=False)


def _contract_note(bundle_contract: str) -> str:
    """What a bundle says about the data contract, for enroll and rotate."""
    if not bundle_contract:
        return ("\n  no data contract yet: after 'fedguard coordinator data', 'fedguard site rotate' gives the site "
                "a bundle it can check its file with")
    return f"\n  carries the data contract {hashlib.sha256(bundle_contract.encode()).hexdigest()[:16]}"


def _attach_log_handler(path: Path) -> None:
    """Write every fedguard record (INFO and up) to the operator's log file, warnings also to stderr.

    The handlers go on ``fedguard``, the root of fedguard's one logger tree
    (DESIGN §7 item 9), so a record from any package (the gateway's
    refusals, the relay streams of ``federation``, the registry's audit)
    reaches the file, whichever module logged it. The tree stops
    propagating there: the top-level CLI's root handler would print each
    warning a second time.
    """
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("fedguard")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    log.addHandler(RichHandler(console=err_console, show_path=False, level=logging.WARNING))


@coordinator_app.command("start")
def start(
    insecure: Annotated[bool, typer.Option("--insecure", help="No TLS, no node auth: loopback only, for development.")]
    = False,
    gateway_address: Annotated[str | None, typer.Option(help="Override the gateway's bind address.")] = None,
    gateway_port: Annotated[int | None, typer.Option(help="Override the gateway's port.")] = None,
    superlink_port: Annotated[int | None, typer.Option(help="Override the SuperLink's loopback port.")] = None,
) -> None:
    """Run the SuperLink (TLS, node auth, state in superlink.db) behind the mutual-TLS gateway until SIGTERM/Ctrl-C."""
    from coordinator.deployment import CoordinatorService
    from coordinator.superlink import check_insecure

    sites = _sites()
    layout = sites.layout
    config = layout.read_config()
    config = replace(config, gateway_address=gateway_address or config.gateway_address,
                     gateway_port=gateway_port or config.gateway_port,
                     superlink_port=superlink_port or config.superlink_port)
    if insecure:
        check_insecure([config.gateway_address, "127.0.0.1"])
        err_console.print("[bold yellow]Warning:[/bold yellow] --insecure: no TLS, no client certificates and no "
                          "SuperNode authentication; anything on this machine can join. Development only.",
                          highlight=False)
    layout.logs.mkdir(parents=True, exist_ok=True)
    _attach_log_handler(layout.gateway_log)
    service = CoordinatorService(layout, config, sites, insecure=insecure)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service.start()
    try:
        where = (f"SuperLink on 127.0.0.1:{config.superlink_port} (insecure)" if insecure else
                 f"gateway on {config.gateway_address}:{service.gateway_port} → SuperLink 127.0.0.1:"
                 f"{config.superlink_port}")
        err_console.print(f"coordinator of [bold]{config.federation}[/bold] running: {where}\n"
                          f"  logs {layout.superlink_log}, {layout.gateway_log} · state {layout.superlink_db}\n"
                          "  stop with Ctrl-C or SIGTERM", highlight=False)
        while not stop.wait(0.5):
            if not service.alive():
                raise StateError(f"the SuperLink exited; see {layout.superlink_log}")
    finally:
        service.stop()
        err_console.print("coordinator stopped")


HeSecretOption = Annotated[Path | None, typer.Option(
    "--he-secret-context", help="The federation's CKKS secret context (from 'fedguard site he-keys') to put "
    "inside the bundle; needed for secure-aggregation ckks.")]


def _he_secret(path: Path | None) -> tuple[bytes | None, str]:
    """``(bytes, key id)`` of a checked CKKS secret context (a public one is refused), or ``(None, "")``."""
    if path is None:
        return None, ""
    from privacy.he.keys import key_id, load_site_context  # tenseal: only when asked (fast CLI start)

    context = load_site_context(path)  # HEKeyError (exit 3) if missing, public-only or not a context
    return path.read_bytes(), key_id(context)


def _site_row(info: Any) -> dict[str, Any]:
    row = asdict(info)
    for key in ("issued_at", "not_after", "revoked_at"):
        row[key] = row[key].isoformat() if row[key] is not None else None
    return row


@site_app.command("enroll")
def enroll(
    name: Annotated[str, typer.Argument(help="Site name (CN of its certificate).")],
    out: Annotated[Path, typer.Option("--out", help="Bundle file to write (0600).")],
    endpoint: Annotated[str | None, typer.Option(help="host:port the site dials [the federation's endpoint].")]
    = None,
    he_secret_context: HeSecretOption = None,
    as_json: JsonOption = False,
) -> None:
    """Issue a site's certificate and node key, register it, and write its one-file bundle."""
    sites = _sites()
    secret, he_key = _he_secret(he_secret_context)
    bundle = sites.enroll(name, out, endpoint=endpoint, actor=_actor(), he_secret_context=secret)
    info = next(i for i in sites.sites() if i.name == name)
    if as_json:
        typer.echo(json.dumps({**_site_row(info), "bundle": str(out), "endpoint": bundle.endpoint,
                               "contract": contract_digest(bundle.contract), "he_key_id": he_key}))
    else:
        err_console.print(f"site [bold]{name}[/bold] enrolled; bundle {out} (0600, holds private keys: hand it "
                          f"over out of band)\n  certificate serial {info.cert_serial}, dials {bundle.endpoint}"
                          + (f"\n  CKKS secret context {he_key} inside the bundle" if he_key else "")
                          + _contract_note(bundle.contract), highlight=False)


@site_app.command("rotate")
def rotate(
    name: Annotated[str, typer.Argument(help="Site name.")],
    out: Annotated[Path, typer.Option("--out", help="New bundle file to write (0600).")],
    endpoint: Annotated[str | None, typer.Option(help="host:port the site dials [the federation's endpoint].")]
    = None,
    he_secret_context: HeSecretOption = None,
    as_json: JsonOption = False,
) -> None:
    """New credentials for one site; its old certificate and node key are revoked, other sites are untouched."""
    sites = _sites()
    secret, he_key = _he_secret(he_secret_context)
    bundle = sites.rotate(name, out, endpoint=endpoint, actor=_actor(), he_secret_context=secret)
    info = next(i for i in sites.sites() if i.name == name)
    if as_json:
        typer.echo(json.dumps({**_site_row(info), "bundle": str(out), "contract": contract_digest(bundle.contract),
                               "he_key_id": he_key}))
    else:
        err_console.print(f"site [bold]{name}[/bold] rotated; new bundle {out}; the old one is refused from now on"
                          + (f"; CKKS secret context {he_key} inside" if he_key else
                             " (no CKKS secret context: pass --he-secret-context if the federation uses ckks)")
                          + _contract_note(bundle.contract), highlight=False)


@site_app.command("he-keys")
def he_keys(
    site_out: Annotated[Path, typer.Option("--site-out", help="Folder for he-secret-context.bin (0600): "
                                           "goes into every site's bundle, never to the coordinator.")],
    coordinator_out: Annotated[Path | None, typer.Option(
        "--coordinator-out", help="Folder for he-public-context.bin [FEDGUARD_HOME/federation].")] = None,
    as_json: JsonOption = False,
) -> None:
    """Create the federation's CKKS key pair: the sites' secret context and the coordinator's public one."""
    from privacy.he.keys import create_federation_keys, key_id, load_site_context  # tenseal: only here

    home = get_settings().home.resolve()
    coordinator_dir = coordinator_out or _layout().root
    if site_out.resolve().is_relative_to(home):
        raise ConfigurationError(f"--site-out {site_out} is inside the coordinator's FEDGUARD_HOME {home}: the "
                                 "secret context must stay out of the coordinator's reach; pick a folder outside "
                                 "it (e.g. on the enrolment machine or a removable disk)")
    secret, public = create_federation_keys(site_out, coordinator_dir)
    key = key_id(load_site_context(secret))
    if as_json:
        typer.echo(json.dumps({"key_id": key, "secret_context": str(secret), "public_context": str(public)}))
        return
    err_console.print(f"CKKS federation key {key}\n  sites' secret context {secret} (0600): pass it to "
                      f"'fedguard site enroll|rotate --he-secret-context', then keep it offline\n  coordinator's "
                      f"public context {public}: 'run launch' gives it to ckks jobs that name no "
                      "he-public-context",
                      highlight=False)


@site_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="Site name.")],
    reason: Annotated[str, typer.Option(help="Recorded in the audit trail.")] = "revoked",
) -> None:
    """Revoke a site for good: its certificates go on the CRL and its node key is unregistered."""
    _sites().revoke(name, actor=_actor(), reason=reason)
    err_console.print(f"site [bold]{name}[/bold] revoked: refused at the gateway's next handshake; a running "
                      "coordinator unregisters its node key within seconds", highlight=False)


SITE_COLUMNS: tuple[tuple[str, Callable[[Any], str]], ...] = (
    ("site", lambda i: str(i.name)),
    ("status", lambda i: str(i.status)),
    ("serial", lambda i: str(i.cert_serial)[:12]),
    ("cert sha256", lambda i: str(i.cert_fingerprint)[:12]),
    ("node key sha256", lambda i: str(i.node_key_fingerprint)[:12]),
    ("issued", lambda i: i.issued_at.date().isoformat()),
    ("expires", lambda i: i.not_after.date().isoformat()),
    ("issues", lambda i: str(i.credentials_issued)),
)
"""``fedguard site list``'s columns, in display order (``--json`` has every field, whole)."""
DROP_ORDER = ("issued", "node key sha256", "cert sha256", "serial", "issues", "expires")
"""Columns left out, first to last, until the longest site name fits the terminal on one line."""


def site_columns(infos: Sequence[Any], width: int) -> list[str]:
    """The columns of :data:`SITE_COLUMNS` that fit ``width`` with every site name whole on one line.

    Names are never cut: optional columns are dropped in :data:`DROP_ORDER`
    instead; only when even ``site`` and ``status`` do not fit does a name
    fold onto a second line.
    """
    cells = {title: max([len(title)] + [len(render(i)) for i in infos]) for title, render in SITE_COLUMNS}
    shown = [title for title, _ in SITE_COLUMNS]
    for title in DROP_ORDER:
        if sum(cells[t] for t in shown) + 2 * (len(shown) - 1) <= width:
            break
        shown.remove(title)
    return shown


@site_app.command("list")
def list_sites(as_json: JsonOption = False) -> None:
    """List enrolled sites: status, current certificate serial and fingerprint, node key fingerprint."""
    infos = _sites().sites()
    if as_json:
        typer.echo(json.dumps([_site_row(i) for i in infos]))
        return
    if not infos:
        console.print("no site enrolled yet; see 'fedguard site enroll --help'")
        return
    shown = site_columns(infos, console.width)
    table = Table(*(Column(title, overflow="fold") if title == "site" else Column(title, no_wrap=True)
                    for title in shown), box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    renders = dict(SITE_COLUMNS)
    for i in infos:
        table.add_row(*(renders[title](i) for title in shown))
    console.print(table)
    hidden = [title for title, _ in SITE_COLUMNS if title not in shown]
    if hidden:
        console.print(f"(not shown at this width: {', '.join(hidden)}; '--json' has every field)", highlight=False)


site_app.command("withdraw")(withdraw)  # coordinator/consent_cli.py
