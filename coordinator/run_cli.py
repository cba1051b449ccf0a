"""``fedguard run launch|resume|status|list``: runs over the deployment runtime, with live progress."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from coordinator.runs.progress import TERMINAL, ProgressLog, from_other_flower_run, size
from lifecycle.errors import ConfigurationError, TrainingError
from lifecycle.home import Home
from lifecycle.settings import get_settings

if TYPE_CHECKING:  # coordinator.runs.job, .launch and .checkpoint import Flower and torch: functions import them
    from coordinator.runs.job import Job
    from coordinator.runs.launch import Connection

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


def _connection(federation: str, superlink: str | None, root_certificates: Path | None, insecure: bool,
                console: Console) -> Connection:
    from coordinator.runs.launch import resolve_connection

    if insecure:
        console.print("[yellow]warning:[/yellow] --insecure: the run is submitted without TLS (loopback only)")
    return resolve_connection(_home(), federation, superlink, root_certificates, insecure)


def _line(event: Mapping[str, Any]) -> str:
    kind = event.get("event")
    if kind == "round":
        eps = event.get("epsilon_max")
        dropped = event.get("dropped") or []
        tail = f"  [red]dropped {', '.join(dropped)}[/red]" if dropped else ""
        return (f"round {event['round']}/{event['rounds']}  sites answered {event['sites']}  "
                f"dropped {len(dropped)}  ε ≤ {'-' if eps is None else f'{eps:.2f}'}  "
                f"accuracy {event['accuracy']:.3f}{tail}")
    if kind == "stage":
        extra = {k: v for k, v in event.items() if k not in ("event", "time", "stage")}
        return f"[dim]{event['stage']} {extra if extra else ''}[/dim]"
    if kind == "done":
        return f"[green]published {event['model']}:{event['version']}[/green]  accuracy {event['accuracy']:.3f}"
    if kind == "failed":
        return f"[red]run failed:[/red] {event.get('error')}"
    return str(dict(event))


def _follow(home: Home, run_id: str, offset: int, timeout: float | None, as_json: bool, console: Console,
            flower_run: int | None = None) -> None:
    from coordinator.runs.launch import events

    last: Mapping[str, Any] = {}
    for event in events(home, run_id, offset=offset, timeout=timeout, flower_run=flower_run):
        last = event
        console.print(json.dumps(event) if as_json else _line(event), highlight=False, soft_wrap=True)
    if last.get("event") == "failed":
        raise TrainingError(f"run {run_id} failed: {last.get('error')}")
    if last.get("event") != "done":
        raise TrainingError(f"run {run_id} did not finish within the follow timeout; "
                            f"'fedguard run status {run_id}' shows where it is")


def _submit_and_follow(job: Job, connection: Connection, follow: bool, timeout: float | None, as_json: bool,
                       console: Console) -> None:
    from coordinator.runs.launch import progress_path, submit

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
    from coordinator.runs.job import Job

    console = Console()
    job = Job.load(job_file, set_ or [])
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
    from coordinator.runs.launch import resume_job, stop_earlier_flower_runs

    console = Console()
    home = _home()
    job = resume_job(home, run_id)
    connection = _connection(federation, superlink, root_certificates, insecure, console)
    notes = Console(stderr=True) if as_json else console  # --json: stdout carries the JSON line only
    for flower_run in stop_earlier_flower_runs(home, run_id, connection):
        notes.print(f"stopped Flower run {flower_run}, which run {run_id} was interrupted in", highlight=False)
    _submit_and_follow(job, connection, follow, timeout, as_json, console)


def _status(home: Home, run_id: str) -> dict[str, Any]:
    from coordinator.runs.checkpoint import STATE
    from coordinator.runs.job import Job
    from coordinator.runs.launch import JOB, flower_runs

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
            "flower_runs": segments}


@run_app.command("status")
def status(run_id: Annotated[str, typer.Argument()], as_json: AsJson = False) -> None:
    """Where RUN_ID is: rounds completed (checkpointed), done/failed, the published model."""
    info = _status(_home(), run_id)
    Console().print(json.dumps(info) if as_json else "  ".join(f"{k}: {v}" for k, v in info.items()),
                    highlight=False)


@run_app.command("list")
def list_runs(as_json: AsJson = False) -> None:
    """Every deployment run in this FEDGUARD_HOME."""
    from coordinator.runs.launch import JOB

    home = _home()
    runs: Iterable[Path] = sorted(p.parent for p in home.runs.glob(f"*/{JOB}"))
    infos = [_status(home, p.name) for p in runs]
    console = Console()
    for info in infos:
        console.print(json.dumps(info) if as_json else "  ".join(f"{k}: {v}" for k, v in info.items()),
                      highlight=False)
    if not infos and not as_json:
        console.print(f"no runs in {home.runs}")


