"""``fedguard client ...``: the site agent's commands.

``start`` runs the site agent (forwarder + SuperNode) from the site's bundle.
The site opens no inbound port: the forwarder listens on 127.0.0.1 only and
dials the coordinator's gateway. When the gateway refuses the site's
certificate (revoked, rotated, unknown CA) ``--max-refused`` times in a row,
the agent stops with :class:`lifecycle.errors.CertificateRefusedError` (exit 7).
The data file and schema stay here; their paths reach the ClientApp through
``--node-config`` (keys in :data:`client.config.NODE_CONFIG_KEYS`).

``check`` validates the site's data file against its schema offline (every
problem at once; exit 2 when any), so an operator can fix a file before the
site ever joins a run; with ``--bundle`` it checks the file through the
site's schema (a mapping: renames, label recoding, ignored columns) against
the federation's data contract that the bundle carries. ``audit`` shows or verifies the site's local audit log
of outgoing messages (docs/site-data.md). ``witness`` shows the coordinator's audit checkpoints this site
witnessed and exports them for ``fedguard audit verify --witness`` (docs/governance.md).

``withdraw`` withdraws consent for a list of the site's records (``--records
ids.csv``) or for the whole site (``--all``): the agent excludes them from
every later load (the whole site: it refuses every message, for good), and
the command writes the signed statement the coordinator's operator records
with ``fedguard site withdraw NAME --statement FILE`` (docs/governance.md).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from client.forwarder import ADVICE, DEFAULT_ADVICE, DEFAULT_MAX_REFUSED
from federation.bundle import read_bundle
from lifecycle.errors import CertificateRefusedError, ConfigurationError, StateError
from lifecycle.home import SiteHome
from lifecycle.settings import get_settings

client_app = typer.Typer(
    help="The site agent: run it, check the site's data, inspect its audit log, withdraw consent.",
    no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)


def _existing(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ConfigurationError(f"the {what} {path} does not exist or is not a file; pass the right path")
    return path.resolve()


def site_node_config(site: str, data: Path, schema: Path, audit_log: Path, ledger: Path,
                     epsilon_cap: float | None, device: str | None = None,
                     consent: Path | None = None) -> dict[str, str | float]:
    """The ``--node-config`` values the ClientApp reads (absolute paths: the ClientApp runs elsewhere)."""
    from client.device import check_device  # torch: imported by the command that needs it (fast CLI start)

    values: dict[str, str | float] = {"site-name": site, "data-path": str(data), "schema-path": str(schema),
                                      "audit-path": str(audit_log.resolve()), "ledger-path": str(ledger.resolve())}
    if consent is not None:
        values["consent-path"] = str(consent.resolve())
    if device is not None:
        values["device"] = check_device(device)
    if epsilon_cap is not None:
        if not epsilon_cap > 0:
            raise ConfigurationError(f"--epsilon-cap must be positive, got {epsilon_cap}")
        values["epsilon-cap"] = float(epsilon_cap)
    return values


def _attach_log_handler(log_file: Path | None = None) -> None:
    """Show every fedguard record (INFO and up) on the site agent's stderr, and append it to ``log_file``.

    The handler goes on ``fedguard``, the root of fedguard's one logger tree
    (DESIGN §7 item 9), so a record from any package (the forwarder's
    refusals, the relay streams of ``federation``, ``lifecycle``) reaches
    it. The tree stops propagating there: the top-level CLI's root handler
    would print each warning a second time. ``log_file`` is the agent's own
    log (``FEDGUARD_HOME/site/SITE/agent.log``: refusals of its certificate
    are there too); the SuperNode's output goes to its own log file
    (:class:`client.supernode.SiteAgent`), not here.
    """
    log = logging.getLogger("fedguard")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(RichHandler(console=err_console, show_path=False))
    if log_file is not None:
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)


@client_app.command("start")
def start(
    bundle: Annotated[Path, typer.Option("--bundle", help="This site's bundle from 'fedguard site enroll' (0600).")],
    data: Annotated[Path, typer.Option("--data", help="The site's CSV or Parquet file (never leaves this machine).")],
    schema: Annotated[Path, typer.Option("--schema", help="Schema TOML the data is validated against.")],
    audit_log: Annotated[Path | None, typer.Option(help="Local audit log [FEDGUARD_HOME/site/SITE/audit.jsonl].")]
    = None,
    ledger: Annotated[Path | None, typer.Option(help="Local privacy ledger [FEDGUARD_HOME/site/SITE/ledger.db].")]
    = None,
    epsilon_cap: Annotated[float | None, typer.Option(help="This site's own ε cap (its veto).")] = None,
    device: Annotated[str | None, typer.Option(
        help="Train on cpu, cuda (fail without a GPU) or auto [the run's site-device, cpu by default].")] = None,
    share_reference: Annotated[bool, typer.Option(
        help="Contribute noised histogram counts to the model's drift reference (docs/site-data.md).")] = True,
    max_refused: Annotated[int, typer.Option(
        help="Stop (exit 7) after this many refused handshakes in a row (certificate revoked, unknown CA).")]
    = DEFAULT_MAX_REFUSED,
    consent: Annotated[Path | None, typer.Option(
        "--consent", help="The site's consent list (what 'fedguard client withdraw' writes) "
        "[FEDGUARD_HOME/site/SITE/consent.json].")] = None,
) -> None:
    """Start the forwarder and a SuperNode for this site and stay in the foreground until SIGTERM/Ctrl-C."""
    from client.consent import log_in_force
    from client.supernode import SiteAgent
    from federation.bundle import read_bundle

    site_bundle = read_bundle(bundle)
    state = SiteHome.under(get_settings().home, site_bundle.site)
    state.root.mkdir(parents=True, exist_ok=True)
    consent_path = (consent or state.consent).resolve()
    config = site_node_config(site_bundle.site, _existing(data, "data file"), _existing(schema, "schema file"),
                              audit_log or state.audit_log, ledger or state.ledger, epsilon_cap, device,
                              consent=consent_path)
    if not share_reference:
        config["share-reference"] = "false"  # federation.reference_share reads it
    if max_refused < 1:
        raise ConfigurationError(f"--max-refused must be at least 1, got {max_refused}")
    _attach_log_handler(state.agent_log)
    log_in_force(consent_path, site_bundle.site)
    agent = SiteAgent(site_bundle, config, log_path=state.supernode_log, max_refused=max_refused)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent.start()
    try:
        err_console.print(f"site [bold]{site_bundle.site}[/bold] of federation {site_bundle.federation} → "
                          f"{site_bundle.endpoint} (mutual TLS); SuperNode log {state.supernode_log}; "
                          "stop with Ctrl-C or SIGTERM", highlight=False)
        while not stop.wait(0.5):
            if (reason := agent.refused()) is not None:
                raise CertificateRefusedError(
                    f"the coordinator refused this site's certificate ({reason}) {max_refused} times in a row. "
                    f"{ADVICE.get(reason, DEFAULT_ADVICE)}. The site agent stopped; log {state.agent_log}")
            if not agent.alive():
                if (reason := agent.probe_refusal()) is not None:  # revoked: the SuperNode gave up first
                    raise CertificateRefusedError(
                        f"the SuperNode stopped and the coordinator refuses this site's certificate ({reason}). "
                        f"{ADVICE.get(reason, DEFAULT_ADVICE)}. The site agent stopped; log {state.agent_log}")
                raise StateError(f"the SuperNode exited; see {state.supernode_log} (a refused certificate "
                                 "shows there as 'could not establish a connection')")
    finally:
        agent.stop()
        err_console.print("site agent stopped")


@client_app.command("check")
def check(
    data: Annotated[Path, typer.Option("--data", help="The site's CSV or Parquet file.")],
    schema: Annotated[Path, typer.Option("--schema", help="The site's schema file (TOML): full, or a mapping onto "
                                         "the federation's contract.")],
    bundle: Annotated[Path | None, typer.Option("--bundle", help="This site's bundle: check against the "
                                                "federation's data contract it carries.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check a data file against its schema, or through it against the federation's contract; every problem (exit 2)."""
    from client.data import check_file  # numpy, flwr: only for this command
    from federation.contract import DataContract
    from federation.mapping import load_site_schema

    contract = None
    if bundle is not None:
        site_bundle = read_bundle(bundle)
        if not site_bundle.contract:
            raise ConfigurationError(
                f"the bundle {bundle} carries no data contract: it was issued before the coordinator declared one "
                f"('fedguard coordinator data'); ask the coordinator for 'fedguard site rotate {site_bundle.site}'")
        contract = DataContract.from_json(site_bundle.contract, source=f"the data contract in {bundle}")
    report = check_file(data, load_site_schema(schema), contract).report
    digest = {"contract": contract.digest} if contract is not None else {}
    if as_json:
        typer.echo(json.dumps({**report.to_dict(), **digest}))
    elif report.ok:
        console.print(f"[green]ok[/green] {escape(report.summary())}"
                      + (f" ({contract.digest[:16]})" if contract is not None else ""), highlight=False,
                      soft_wrap=True)
    if not report.ok:
        if not as_json:
            console.print(report.summary(), highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(2)


@client_app.command("audit")
def audit(
    log: Annotated[Path, typer.Option("--log", help="The site's audit log (node config audit-path).")],
    verify: Annotated[bool, typer.Option("--verify", help="Verify the hash chain (exit 5 if broken).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the lines as JSON.")] = False,
) -> None:
    """Show the messages this site sent (kind, size, SHA-256: never their content), or verify the log."""
    from client.audit import read_log, verify_log  # Flower: imported by the command that needs it

    if verify:
        count = verify_log(log)  # raises AuditLogError (exit 5) naming the first bad line
        if as_json:
            typer.echo(json.dumps({"log": str(log), "lines": count, "verified": True}))
        else:
            console.print(f"[green]verified[/green] {count} line(s) of '{log}': the hash chain is intact",
                          highlight=False, soft_wrap=True)
        return
    entries = list(read_log(log))
    if as_json:
        typer.echo(json.dumps(entries))
        return
    table = Table("seq", "time", "run", "round", "kind", "records", "bytes", "sha256")
    for e in entries:
        kind = f"{e['kind']} (error)" if e.get("error") else str(e["kind"])
        table.add_row(str(e["seq"]), str(e["at"]), str(e["run-id"]), str(e["round"]), kind,
                      ",".join(e.get("records", [])), str(e["size"]), str(e["sha256"])[:16] + "…")
    console.print(table)


@client_app.command("witness")
def witness(
    log: Annotated[Path, typer.Option("--log", help="The site's audit log (node config audit-path); the witness "
                                      "file is beside it.")],
    out: Annotated[Path | None, typer.Option("--out", help="Write the witnessed checkpoints here (JSON lines) for "
                                             "'fedguard audit verify --witness'.")] = None,
    site: Annotated[str, typer.Option("--site", help="Name the witness in the exported file.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the witness file's entries as JSON.")] = False,
) -> None:
    """Show the coordinator's audit checkpoints this site witnessed (and any alarm); export them with --out."""
    from lifecycle.audit.witness import ALARMS, WARNINGS, WitnessLog, witness_path

    witness_log = WitnessLog(witness_path(log))
    entries, damaged = witness_log.scan()
    exported = witness_log.export(out, site)[0] if out is not None else None
    if as_json:
        typer.echo(json.dumps({"witness_file": str(witness_log.path), "out": str(out) if out else None,
                               "exported": exported, "skipped_damaged": len(damaged), "damaged_lines": list(damaged),
                               "entries": [json.loads(e.line()) for e in entries]}))
        return
    table = Table("events", "last event", "head", "signed", "received", "status")
    for e in entries:
        cp = e.signed.checkpoint
        style = "red" if e.status in ALARMS else "yellow" if e.status in WARNINGS else ""
        table.add_row(str(cp.events), str(cp.event_id), cp.hash[:16] + "…", cp.at, e.received_at,
                      f"[{style}]{e.status}[/{style}]" if style else e.status)
    if entries:
        console.print(table)
    else:
        console.print(f"no audit checkpoint witnessed yet in '{witness_log.path}' (each run's messages bring one)",
                      highlight=False, soft_wrap=True)
    alarms = [e for e in entries if e.status in ALARMS]
    if alarms:
        console.print(f"[red]{len(alarms)} alarm(s)[/red]: the coordinator sent a checkpoint that contradicts one "
                      "this site witnessed; hand the witness file to an auditor", highlight=False)
    if damaged:
        console.print(f"[red]{len(damaged)} damaged line(s)[/red] in '{escape(str(witness_log.path))}' (line "
                      f"{', '.join(map(str, damaged[:10]))}) skipped: keep the file for an auditor", highlight=False,
                      soft_wrap=True)
    if exported is not None:
        console.print(f"{exported} witnessed checkpoint(s) written to '{out}'"
                      f"{f' ({len(damaged)} damaged line(s) skipped)' if damaged else ''}: 'fedguard audit verify "
                      f"--witness {out}' checks the registry against them", highlight=False, soft_wrap=True)


@client_app.command("withdraw")
def withdraw(
    bundle: Annotated[Path, typer.Option("--bundle", help="This site's bundle (its node key signs the statement).")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded here and by the coordinator).")],
    records: Annotated[Path | None, typer.Option("--records", help="CSV of the record ids to withdraw (header row; "
                                                 "the id column, or the only column).")] = None,
    whole_site: Annotated[bool, typer.Option("--all", help="Withdraw the whole site, for good.")] = False,
    schema: Annotated[Path | None, typer.Option("--schema", help="The site's schema: its id-column names the "
                                                "column to read from --records, and must exist for exclusion.")]
    = None,
    id_column: Annotated[str | None, typer.Option("--id-column", help="The column of --records holding the ids "
                                                  "[the schema's id-column, else the file's only column].")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Where to write the signed statement "
                                             "[FEDGUARD_HOME/site/SITE/withdrawal-TIME.json].")] = None,
    audit_log: Annotated[Path | None, typer.Option(help="Local audit log [FEDGUARD_HOME/site/SITE/audit.jsonl].")]
    = None,
    consent: Annotated[Path | None, typer.Option(
        "--consent", help="The consent list the site agent reads: the same as 'fedguard client start --consent' "
        "[FEDGUARD_HOME/site/SITE/consent.json, as 'client start' uses].")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was done as JSON.")] = False,
) -> None:
    """Withdraw consent for records (--records) or the whole site (--all); write the statement for the coordinator."""
    from datetime import UTC, datetime

    from client.consent import withdraw as withdraw_consent  # Flower, cryptography: only for this command
    from federation.consent import read_ids

    if (records is None) == (not whole_site):
        raise ConfigurationError("give exactly one of --records ids.csv or --all")
    site_bundle = read_bundle(bundle)
    state = SiteHome.under(get_settings().home, site_bundle.site)
    ids = None
    if records is not None:
        path, column = _existing(records, "records file"), id_column
        if column is None and schema is not None:  # the schema's id column if the list uses it, else its only column
            named = _schema_id_column(schema, site_bundle.contract)
            column = named if named in _header(path) else None
        ids = read_ids(path, column)
    now = datetime.now(UTC)
    target = out or state.root / f"withdrawal-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    consent_path = (consent or state.consent).resolve()
    done = withdraw_consent(site_bundle, reason=reason, ids=ids, consent_path=consent_path, out=target,
                            audit_log=audit_log or state.audit_log, now=now)
    if as_json:
        typer.echo(json.dumps(done.to_dict()))
        return
    what = ("its consent as a whole: this agent refuses every message from now on, for good" if ids is None else
            f"{done.signed.statement.record_count} record(s) ({done.new_ids} newly excluded, "
            f"{done.excluded_total} excluded in all): every later load of the site's file leaves them out")
    console.print(f"site [bold]{escape(site_bundle.site)}[/bold] withdrew {what}.\n"
                  f"consent list {escape(str(consent_path))} (start the agent with this list: 'fedguard client "
                  "start' logs the one it has in force)\n"
                  f"statement  {escape(str(done.statement_path))} (signed with the node key "
                  f"{done.signed.key[:16]}…; no record id in it)\n"
                  f"send it to the coordinator's operator: fedguard site withdraw {escape(site_bundle.site)} "
                  f"--reason '…' --statement {escape(done.statement_path.name)}", highlight=False, soft_wrap=True)


def _schema_id_column(schema: Path | None, contract: str) -> str | None:
    """The id column the site's schema names (a mapping schema: the contract's record-id, as the site calls it)."""
    if schema is None:
        return None
    from client.data import id_column_of  # numpy, flwr: only for this command
    from federation.contract import DataContract
    from federation.mapping import load_site_schema

    parsed = load_site_schema(_existing(schema, "schema file"))
    column = id_column_of(parsed, DataContract.from_json(contract) if contract else None)
    if column is None:
        raise ConfigurationError(f"the schema {schema} names no id column, so the agent could not exclude withdrawn "
                                 "records: add id-column = \"<column>\" to it (a mapping schema: map the contract's "
                                 "record-id), then withdraw again")
    return column


def _header(path: Path) -> list[str]:
    from federation.tabular import read_csv_rows

    return read_csv_rows(path)[0]
