"""``fedguard run launch|resume|stop|status|list``: runs over the deployment runtime, with live progress."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from coordinator.provisioning.federation import FederationLayout
from coordinator.runs import render
from coordinator.runs.checkpoint import STATE
from coordinator.runs.control import (
    UNDER_WAY,
    flower_statuses,
    is_serverapp,
    live_state,
    serverapp,
    stop_run,
    terminal_event,
)
from coordinator.runs.job import Job
from coordinator.runs.launch import (
    JOB,
    Connection,
    events,
    flower_runs,
    progress_path,
    resolve_connection,
    resume_job,
    stop_earlier_flower_runs,
    submit,
)
from coordinator.runs.progress import TERMINAL, ProgressLog, from_other_flower_run, size
from lifecycle.audit import actors
from lifecycle.errors import ConfigurationError, RunStoppedError, TrainingError
from lifecycle.home import Home
from lifecycle.settings import get_settings

run_app = typer.Typer(help="Submit federated runs to the coordinator's SuperLink and follow them.",
                      no_args_is_help=True)

Superlink = Annotated[str | None, typer.Option(
    envvar="FEDGUARD_SUPERLINK",
    help="SuperLink address host:port [this machine's federation: 127.0.0.1:<superlink-port>].")]
RootCerts = Annotated[Path | None, typer.Option(
    envvar="FEDGUARD_SUPERLINK_CA",
    help="CA certificate (PEM) that verifies the SuperLink [this machine's federation CA].")]
Federation = Annotated[str, typer.Option(help="Name of the connection in fedguard's FLWR_HOME.")]
Insecure = Annotated[bool, typer.Option(help="No TLS (loopback only; prints a warning).")]
Follow = Annotated[bool, typer.Option(help="Follow progress until the run ends.")]
Timeout = Annotated[float | None, typer.Option(help="Stop following after this many seconds.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print events and the outcome as JSON lines.")]


def _home() -> Home:
    return Home(get_settings().home).ensure()


def _machine_defaults() -> dict[str, Any]:
    """Job keys the coordinator machine supplies when a job leaves them empty (``Job.load``'s ``defaults``)."""
    public: Path = FederationLayout.under(_home().root).he_public_context
    return {"he-public-context": str(public.resolve())} if public.is_file() else {}


def _connection(federation: str, superlink: str | None, root_certificates: Path | None, insecure: bool,
                console: Console) -> Connection:

    if insecure:
        console.print("[yellow]warning:[/yellow] --insecure: the run is submitted without TLS (loopback only)")
    return resolve_connection(_home(), federation, superlink, root_certificates, insecure)


def _follow(home: Home, run_id: str, offset: int, timeout: float | None, as_json: bool, console: Console,
            flower_run: int | None = None) -> None:

    last: Mapping[str, Any] = {}
    try:
        for event in events(home, run_id, offset=offset, timeout=timeout, flower_run=flower_run):
            last = event
            text = json.dumps(event) if as_json else render.line(event)
            if text is not None:
                console.print(text, highlight=False, soft_wrap=True)
    except KeyboardInterrupt:  # only the follow ends: the run is the coordinator's
        Console(stderr=True).print(
            f"run {run_id} goes on at the coordinator; follow it with 'fedguard run status {run_id}', "
            f"stop it with 'fedguard run stop {run_id}'", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    if last.get("event") == "stopped":
        raise RunStoppedError(f"run {run_id} was stopped by {last.get('actor', 'an operator')}; "
                              f"'fedguard run resume {run_id}' continues it after its last completed round")
    if last.get("event") == "failed":
        raise render.failure(run_id, last)
    if last.get("event") != "done":
        raise TrainingError(f"run {run_id} did not finish within the follow timeout; "
                            f"'fedguard run status {run_id}' shows where it is")


def _submit_and_follow(job: Job, connection: Connection, follow: bool, timeout: float | None, as_json: bool,
                       console: Console) -> None:

    home = _home()
    run_id = job.run_id
    offset = size(progress_path(home, run_id)) if run_id else 0
    run_id, flower_run = submit(job, home, connection)
    console.print(json.dumps({"run_id": run_id, "flower_run": flower_run}) if as_json
                  else f"run [bold]{run_id}[/bold] submitted (Flower run {flower_run})", highlight=False)
    if follow:
        _follow(home, run_id, offset, timeout, as_json, console, flower_run)


@run_app.command("launch")
def launch(
    job_file: Annotated[Path, typer.Argument(help="Flat TOML job file (run-config keys).")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a job key: key=value (repeatable).")] = None,
    superlink: Superlink = None, root_certificates: RootCerts = None, federation: Federation = "fedguard",
    insecure: Insecure = False, follow: Follow = True, timeout: Timeout = None, as_json: AsJson = False,
) -> None:
    """Submit JOB_FILE to the SuperLink and stream progress: round, sites answered, dropped, ε, accuracy."""
    console = Console()
    job = Job.load(job_file, set_ or [], defaults=_machine_defaults())
    _submit_and_follow(job, _connection(federation, superlink, root_certificates, insecure, console),
                       follow, timeout, as_json, console)


@run_app.command("resume")
def resume(
    run_id: Annotated[str, typer.Argument(help="The fedguard run id printed by 'run launch'.")],
    superlink: Superlink = None, root_certificates: RootCerts = None, federation: Federation = "fedguard",
    insecure: Insecure = False, follow: Follow = True, timeout: Timeout = None, as_json: AsJson = False,
) -> None:
    """Submit RUN_ID's job again: it continues after its last completed round (its checkpoint).

    The Flower run it was interrupted in is stopped first (a killed
    coordinator leaves it ``running`` in the SuperLink's database).
    """
    console = Console()
    home = _home()
    job = resume_job(home, run_id)
    connection = _connection(federation, superlink, root_certificates, insecure, console)
    notes = Console(stderr=True) if as_json else console  # --json: stdout carries the JSON line only
    segments = flower_runs(home, run_id)
    if terminal_event(home, run_id, segments[-1] if segments else None) == "stopped":
        notes.print(f"run {run_id} was stopped by an operator ('fedguard run stop'); it continues after its last "
                    "completed round", highlight=False)
    for flower_run in stop_earlier_flower_runs(home, run_id, connection):
        notes.print(f"stopped Flower run {flower_run}, which run {run_id} was interrupted in", highlight=False)
    _submit_and_follow(job, connection, follow, timeout, as_json, console)


def _status(home: Home, run_id: str) -> dict[str, Any]:

    directory = home.runs / run_id
    if not (directory / JOB).exists():
        raise ConfigurationError(f"no run '{run_id}' in {home.runs}; see 'fedguard run list'")
    evts = ProgressLog(directory / "progress.jsonl").events()
    state_path = directory / "checkpoint" / STATE
    completed = json.loads(state_path.read_text()).get("round", 0) if state_path.exists() else 0
    segments = flower_runs(home, run_id)
    current = segments[-1] if segments else None
    last = next((e for e in reversed(evts)
                 if e.get("event") in TERMINAL and not from_other_flower_run(e, current)), None)
    rounds = Job.load(directory / JOB).config.get("num-server-rounds")
    return {"run_id": run_id, "rounds_completed": completed, "rounds": rounds,
            "state": last["event"] if last else ("started" if evts else "submitted"),
            "model": f"{last['model']}:{last['version']}" if last and last.get("event") == "done" else None,
            "flower_runs": segments, "site_reasons": render.site_reasons(evts)}


def _live(home: Home, infos: list[dict[str, Any]], federation: str, superlink: str | None,
          root_certificates: Path | None, insecure: bool) -> list[dict[str, Any]]:
    """``infos`` with the state of each run under way confirmed by the SuperLink (one ``flwr ls`` for all)."""
    if not any(info["state"] in UNDER_WAY for info in infos):
        return infos
    try:
        connection = resolve_connection(home, federation, superlink, root_certificates, insecure)
        statuses = flower_statuses(home, connection)
    except ConfigurationError:
        statuses = None
    for info in infos:
        if info["state"] not in UNDER_WAY:
            continue
        current = info["flower_runs"][-1] if info["flower_runs"] else None
        recorded = serverapp(home.runs, info["run_id"])
        gone = recorded is not None and recorded[1] == current and not is_serverapp(recorded[0])
        flower = None if statuses is None or current is None else statuses.get(current)
        info["state"] = live_state(info["state"], flower, reachable=statuses is not None, serverapp_gone=gone)
        info["flower_status"] = flower if statuses is not None else None
    return infos


@run_app.command("stop")
def stop(
    run_id: Annotated[str, typer.Argument(help="The fedguard run id printed by 'run launch'.")],
    superlink: Superlink = None, root_certificates: RootCerts = None, federation: Federation = "fedguard",
    insecure: Insecure = False, as_json: AsJson = False,
) -> None:
    """Stop RUN_ID: its Flower run and ServerApp end, the state becomes 'stopped', 'run.stopped' is audited.

    A stopped run keeps its checkpoint: 'fedguard run resume RUN_ID'
    continues it after its last completed round.
    """
    from lifecycle.registry import Registry

    console = Console()
    home = _home()
    if not (home.runs / run_id / JOB).exists():
        raise ConfigurationError(f"no run '{run_id}' in {home.runs}; see 'fedguard run list'")
    connection = _connection(federation, superlink, root_certificates, insecure, Console(stderr=True))
    result = stop_run(home, run_id, connection, actor=_actor(), registry=Registry.open(get_settings()))
    console.print(json.dumps(result.to_dict()) if as_json else
                  f"run [bold]{run_id}[/bold] stopped (Flower run {result.flower_run}: {result.flower_status}; "
                  f"ServerApp: {result.serverapp}); 'fedguard run resume {run_id}' continues it",
                  highlight=False, soft_wrap=True)


def _actor() -> str:
    """Who runs the command, for the audit trail: the OS user as an identity (``user:alice``, or ``user:uid-N``)."""
    return actors.actor()


@run_app.command("status")
def status(
    run_id: Annotated[str, typer.Argument()], superlink: Superlink = None, root_certificates: RootCerts = None,
    federation: Federation = "fedguard", insecure: Insecure = False, as_json: AsJson = False,
) -> None:
    """Where RUN_ID is: rounds completed (checkpointed), its state as the SuperLink confirms it, the model."""
    home = _home()
    info = _live(home, [_status(home, run_id)], federation, superlink, root_certificates, insecure)[0]
    Console().print(json.dumps(info) if as_json else render.status_line(info),
                    highlight=False, soft_wrap=True)


@run_app.command("list")
def list_runs(
    superlink: Superlink = None, root_certificates: RootCerts = None, federation: Federation = "fedguard",
    insecure: Insecure = False, as_json: AsJson = False,
) -> None:
    """Every deployment run in this FEDGUARD_HOME, with its state as the SuperLink confirms it."""
    home = _home()
    runs: Iterable[Path] = sorted(p.parent for p in home.runs.glob(f"*/{JOB}"))
    infos = _live(home, [_status(home, p.name) for p in runs], federation, superlink, root_certificates, insecure)
    console = Console()
    for info in infos:
        console.print(json.dumps(info) if as_json else render.status_line(info),
                      highlight=False, soft_wrap=True)
    if not infos and not as_json:
        console.print(f"no runs in {home.runs}")


