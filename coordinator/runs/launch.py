"""Submitting a job to the SuperLink and following its progress.

Submission goes through ``flwr run`` as a subprocess, with the connection
written to a fedguard-owned ``FLWR_HOME`` (``FEDGUARD_HOME/flwr/config.toml``)
rather than through Flower's Control API in-process: ``flwr run`` is the
documented, versioned interface (it builds the FAB, authenticates, checks
TLS), while the Control API's Python client is internal to Flower and has
changed between releases. Progress does not come from Flower's log stream
(free text) but from the ServerApp's own JSON-lines events in
``FEDGUARD_HOME/runs/<run-id>/progress.jsonl`` (:mod:`coordinator.runs.progress`),
which the coordinator machine shares with the SuperLink.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator import logger
from coordinator.runs import run_dir
from coordinator.runs.job import Job
from coordinator.runs.progress import PROGRESS, follow
from lifecycle.errors import ConfigurationError, StateError, TrainingError
from lifecycle.home import Home, write_private

APP_DIR = Path(__file__).resolve().parents[2]
"""The Flower app (``pyproject.toml`` with ``[tool.flwr.app]``): the fedguard source tree."""

JOB = "job.toml"
FLOWER_RUNS = "flower-runs.json"


@dataclass(frozen=True)
class Connection:
    """Where the SuperLink is and how to trust it (TLS by default)."""

    name: str
    address: str
    root_certificates: Path | None = None
    insecure: bool = False

    def validate(self) -> Connection:
        if not self.insecure and self.root_certificates is None:
            raise ConfigurationError(
                f"SuperLink {self.address}: give --root-certificates (the federation CA), or --insecure on loopback"
            )
        if self.insecure and self.address.rsplit(":", 1)[0] not in ("127.0.0.1", "localhost", "[::1]"):
            raise ConfigurationError(f"--insecure is only allowed for a SuperLink on loopback, not {self.address}")
        if self.root_certificates is not None and not self.root_certificates.is_file():
            raise ConfigurationError(f"root certificates '{self.root_certificates}' do not exist")
        return self

    def write(self, flwr_home: Path) -> Path:
        """``config.toml`` in ``flwr_home`` naming this connection as the default."""
        flwr_home.mkdir(parents=True, exist_ok=True)
        lines = [f'[superlink]\ndefault = "{self.name}"\n', f"[superlink.{self.name}]",
                 f'address = "{self.address}"']
        if self.insecure:
            lines.append("insecure = true")
        else:
            lines.append(f'root-certificates = "{self.root_certificates.resolve()}"')  # type: ignore[union-attr]
        path = flwr_home / "config.toml"
        path.write_text("\n".join(lines) + "\n")
        return path


def resolve_connection(home: Home, name: str, superlink: str | None, root_certificates: Path | None,
                       insecure: bool = False) -> Connection:
    """The connection to submit to: what was given, else this machine's federation.

    ``--superlink``/``--root-certificates`` (or ``FEDGUARD_SUPERLINK``/
    ``FEDGUARD_SUPERLINK_CA``) win. What is missing comes from the federation
    ``fedguard coordinator init`` wrote under ``FEDGUARD_HOME/federation/``:
    the SuperLink's Control API on ``127.0.0.1:<superlink-port>`` (Flower 1.41
    serves it on the SuperLink's one port, bound to loopback) and the
    federation CA, which signed the coordinator certificate (it names
    127.0.0.1). So ``fedguard run launch job.toml`` works as is on the
    coordinator machine.
    """
    from coordinator.provisioning import FederationLayout

    needs_ca = root_certificates is None and not insecure
    if superlink is None or needs_ca:
        layout = FederationLayout.under(home.root)
        if not layout.exists():
            missing = " and ".join(n for n, gone in (("--superlink HOST:PORT", superlink is None),
                                                     ("--root-certificates CA.crt", needs_ca)) if gone)
            raise ConfigurationError(
                f"no SuperLink to submit to: pass {missing} (or set FEDGUARD_SUPERLINK/FEDGUARD_SUPERLINK_CA), or run "
                f"this on the coordinator, where 'fedguard coordinator init' writes {layout.config}")
        config = layout.read_config()
        superlink = superlink or f"127.0.0.1:{config.superlink_port}"
        if needs_ca:
            root_certificates = layout.ca_cert
    return Connection(name, superlink, root_certificates, insecure)


def _flwr_env(home: Home) -> dict[str, str]:
    env = dict(os.environ)
    env.update(FLWR_HOME=str((home.root / "flwr").resolve()), FLWR_TELEMETRY_ENABLED="0",
               FLWR_DISABLE_UPDATE_CHECK="1")
    return env


def _json_reply(output: str) -> dict[str, Any]:
    """The JSON object that ``flwr … --format json`` prints on stdout (``{}`` if there is none)."""
    start = output.find("{")
    try:
        reply = json.loads(output[start:]) if start >= 0 else {}
    except ValueError:
        return {}
    return reply if isinstance(reply, dict) else {}


def _flwr(args: list[str], home: Home, timeout: float) -> tuple[int, dict[str, Any], str]:
    """Run ``flwr ARGS --format json``: (exit status, its JSON reply, its last lines of text for errors)."""
    cmd = [sys.executable, "-m", "flwr.cli.app", *args, "--format", "json"]
    proc = subprocess.run(cmd, env=_flwr_env(home), capture_output=True, text=True, timeout=timeout, check=False)
    reply = _json_reply(proc.stdout)
    detail = str(reply.get("error-message") or " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:]))
    return proc.returncode, reply, " ".join(detail.split())


def flower_run_id(reply: dict[str, Any]) -> int | None:
    """The Flower run id in ``flwr run --format json``'s reply (``"run-id": "123"``), if any."""
    try:
        return int(reply["run-id"])
    except (KeyError, TypeError, ValueError):
        return None


def flower_runs(home: Home, run_id: str) -> list[int]:
    """Every Flower run this fedguard run was submitted as, oldest first (``runs/<id>/flower-runs.json``)."""
    path = run_dir(home.runs, run_id) / FLOWER_RUNS
    try:
        return [int(r) for r in json.loads(path.read_text(encoding="utf-8"))]
    except FileNotFoundError:
        return []
    except (ValueError, TypeError) as exc:
        raise StateError(f"{path} is not a JSON list of Flower run ids ({exc}); restore it or delete it") from exc


def _record_flower_run(home: Home, run_id: str, flower_run: int) -> None:
    path = run_dir(home.runs, run_id) / FLOWER_RUNS
    write_private(path, json.dumps([*flower_runs(home, run_id), flower_run]).encode())


def submit(job: Job, home: Home, connection: Connection, *, app: Path = APP_DIR,
           timeout: float = 300.0) -> tuple[str, int | None]:
    """Submit ``job`` (a run id is assigned if it has none); return (run id, Flower run id).

    The Flower run id is also appended to the run's ``flower-runs.json``, so
    that a resume can stop the Flower run a coordinator crash left behind.
    """
    run_id = job.run_id or uuid.uuid4().hex[:12]
    job = job.with_run_id(run_id)
    directory = run_dir(home.runs, run_id)
    job.dump(directory / JOB)
    connection.validate().write(home.root / "flwr")
    status, reply, detail = _flwr(["run", str(app), connection.name, "--run-config", job.run_config_arg()],
                                  home, timeout)
    if status != 0 or reply.get("success") is False:
        raise TrainingError(f"the SuperLink at {connection.address} refused the run: {detail}; "
                            "check the address, the CA and that the coordinator is started")
    flower_run = flower_run_id(reply)
    if flower_run is None:
        logger.warning("run %s submitted, but 'flwr run' printed no run id: %s", run_id, detail)
    else:
        _record_flower_run(home, run_id, flower_run)
    logger.info("run %s submitted as Flower run %s", run_id, flower_run)
    return run_id, flower_run


def stop_earlier_flower_runs(home: Home, run_id: str, connection: Connection, *, timeout: float = 60.0) -> list[int]:
    """Ask the SuperLink to stop every Flower run this run was submitted as; return those it stopped.

    A coordinator killed mid-run leaves its Flower run ``running`` in the
    SuperLink's database for good (nothing runs it any more); a resume is a
    new Flower run, so the old one is stopped first and ``flwr ls`` shows
    the truth. A run the SuperLink already finished is left as it is.
    """
    connection.validate().write(home.root / "flwr")
    stopped = []
    for flower_run in flower_runs(home, run_id):
        status, reply, detail = _flwr(["stop", str(flower_run), connection.name], home, timeout)
        if status == 0 and reply.get("success") is not False:
            stopped.append(flower_run)
            logger.info("run %s: stopped its interrupted Flower run %d", run_id, flower_run)
        else:
            logger.info("run %s: Flower run %d was not stopped (%s)", run_id, flower_run, detail)
    return stopped


def resume_job(home: Home, run_id: str) -> Job:
    """The job of an earlier run, to submit again with the same run id (it resumes from its checkpoint)."""
    path = run_dir(home.runs, run_id) / JOB
    if not path.exists():
        raise ConfigurationError(f"no run '{run_id}' in {home.runs}; see 'fedguard run list'")
    if (path.parent / "outcome.json").exists():
        raise ConfigurationError(f"run '{run_id}' already finished and published its model; launch a new run")
    return Job.load(path)


def progress_path(home: Home, run_id: str) -> Path:
    """The run's progress event log (JSON lines), which the coordinator appends to and followers read."""
    return run_dir(home.runs, run_id) / PROGRESS


def events(home: Home, run_id: str, *, offset: int = 0, timeout: float | None = None,
           now: Callable[[], float] = time.monotonic, flower_run: int | None = None) -> Iterator[dict[str, Any]]:
    """Follow the run's progress events (from byte ``offset``) until it is done or failed, or ``timeout``.

    ``flower_run``: the Flower run being followed; failures reported by
    another (an earlier, stopped segment) are skipped.
    """
    deadline = None if timeout is None else now() + timeout
    yield from follow(progress_path(home, run_id), offset=offset,
                      stop=lambda: deadline is not None and now() > deadline, flower_run=flower_run)
