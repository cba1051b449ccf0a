"""Job files, progress logs, checkpoints, resume offsets and the responsive grid (no network)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message

from coordinator.grid import ResponsiveGrid
from coordinator.runs import run_dir
from coordinator.runs.checkpoint import Checkpoint
from coordinator.runs.job import Job, parse_override
from coordinator.runs.launch import Connection, _json_reply, _record_flower_run, flower_run_id, flower_runs
from coordinator.runs.progress import ProgressLog, follow, size
from coordinator.runs.resume import RunState
from coordinator.strategies.round_offset import RoundOffset
from coordinator.strategies.tracked import SiteLedger, TrackedStrategy
from lifecycle.errors import ConfigurationError, StateError
from lifecycle.home import Home
from privacy.strategy_wrapper import StrategyWrapper


def test_job_merges_overrides_as_toml_and_validates(tmp_path: Path) -> None:
    job_file = tmp_path / "job.toml"
    job_file.write_text('num-server-rounds = 5\nmodel-name = "cardio"\ndata-dir = "ref"\n')
    job = Job.load(job_file, ["num-server-rounds=2", "dp-epsilon=1.5", "model-name=heart"])
    assert job.config["num-server-rounds"] == 2 and job.config["dp-epsilon"] == 1.5
    assert job.config["model-name"] == "heart" and Path(job.config["data-dir"]).is_absolute()
    assert 'model-name="heart"' in job.run_config_arg() and "num-server-rounds=2" in job.run_config_arg()
    assert parse_override("hidden=\"32,16\"") == ("hidden", "32,16")


def test_a_ckks_job_takes_the_coordinators_public_context_unless_it_names_one(tmp_path: Path) -> None:
    from coordinator.provisioning.federation import FederationLayout
    from privacy.he.keys import PUBLIC_CONTEXT_NAME

    assert FederationLayout.under(tmp_path).he_public_context.name == PUBLIC_CONTEXT_NAME  # 'site he-keys' writes
    job_file = tmp_path / "job.toml"
    job_file.write_text('secure-aggregation = "ckks"\nhe-public-context = ""\ndata-dir = "ref"\n')
    defaults = {"he-public-context": "/home/coordinator/federation/he-public-context.bin"}
    assert Job.load(job_file, defaults=defaults).config["he-public-context"] == defaults["he-public-context"]
    own = Job.load(job_file, ["he-public-context=/elsewhere.bin"], defaults=defaults)
    assert own.config["he-public-context"] == "/elsewhere.bin"
    with pytest.raises(ConfigurationError, match="needs he-public-context"):
        Job.load(job_file)  # no default on this machine: the job must name it


@pytest.mark.parametrize("text, match", [
    ("rounds = 3\n", "unknown run-config keys"),
    ("[table]\nx = 1\n", "keep it flat"),
    ("num-server-rounds = 0\n", "at least 1"),
    ("num-server-rounds = \n", "not valid TOML"),
])
def test_job_refuses_bad_files(tmp_path: Path, text: str, match: str) -> None:
    job_file = tmp_path / "job.toml"
    job_file.write_text(text)
    with pytest.raises(ConfigurationError, match=match):
        Job.load(job_file)


def test_run_ids_cannot_escape_the_runs_directory(tmp_path: Path) -> None:
    assert run_dir(tmp_path, "ab12-cd") == tmp_path / "ab12-cd"
    for bad in ("../x", "", "a/b"):
        with pytest.raises(ConfigurationError):
            run_dir(tmp_path, bad)


def test_insecure_connection_only_on_loopback(tmp_path: Path) -> None:
    Connection("f", "127.0.0.1:9", insecure=True).validate()
    with pytest.raises(ConfigurationError, match="loopback"):
        Connection("f", "10.0.0.1:9", insecure=True).validate()
    with pytest.raises(ConfigurationError, match="root-certificates"):
        Connection("f", "10.0.0.1:9").validate()
    ca = tmp_path / "ca.crt"
    ca.write_text("pem")
    text = Connection("f", "coord:9", ca).validate().write(tmp_path / "flwr").read_text()
    assert 'default = "f"' in text and f'root-certificates = "{ca.resolve()}"' in text and "insecure =" not in text


def test_progress_follow_reads_from_offset_and_stops_at_terminal(tmp_path: Path) -> None:
    log = ProgressLog(tmp_path / "p.jsonl", now=lambda: 1.0)
    log("failed", {"error": "earlier attempt"})
    offset = size(log.path)
    log("round", {"round": 1})
    log("done", {"model": "m"})
    log("round", {"round": 9})  # after the terminal event: not read
    seen = list(follow(log.path, offset=offset, stop=lambda: True, sleep=lambda s: None))
    assert [e["event"] for e in seen] == ["round", "done"] and seen[0]["time"] == 1.0
    with log.path.open("a") as handle:
        handle.write('{"event": "torn')  # a torn last line is skipped by events()
    assert len(log.events()) == 4


def test_follow_skips_a_failure_reported_by_an_earlier_flower_run(tmp_path: Path) -> None:
    """A resume stops the earlier Flower run; its ServerApp's late 'failed' must not end the new run's follow."""
    log = ProgressLog(tmp_path / "p.jsonl", now=lambda: 1.0)
    log("round", {"round": 2})
    log("failed", {"error": "RunNotRunning", "flower_run": 11})  # the stopped segment, reporting late
    log("done", {"model": "m"})

    def seen(flower_run: int | None) -> list[str]:
        return [e["event"] for e in follow(log.path, stop=lambda: True, sleep=lambda s: None, flower_run=flower_run)]

    assert seen(22) == ["round", "done"]
    assert seen(11) == seen(None) == ["round", "failed"]  # its own failure, or unknown: stop there


def test_checkpoint_roundtrip_is_atomic_and_never_pickles(tmp_path: Path) -> None:
    weights = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    assert Checkpoint.load(tmp_path / "ckpt") is None
    Checkpoint(2, weights, {"history": [{"round": 1}, {"round": 2}]}).save(tmp_path / "ckpt")
    Checkpoint(3, {"w": weights["w"] + 1}, {"history": []}).save(tmp_path / "ckpt")
    loaded = Checkpoint.load(tmp_path / "ckpt")
    assert loaded is not None and loaded.round == 3 and torch.equal(loaded.weights["w"], weights["w"] + 1)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["state.json", "weights.safetensors"]
    (tmp_path / "ckpt" / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(StateError, match="remove it to restart"):
        Checkpoint.load(tmp_path / "ckpt")


class _Recorder(StrategyWrapper):
    def __init__(self) -> None:
        self.rounds: list[int] = []

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Any) -> Iterable[Message]:
        self.rounds.append(server_round)
        return []

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[Any, Any]:
        self.rounds.append(server_round)
        return None, None


def test_round_offset_gives_the_inner_strategy_true_round_numbers() -> None:
    inner = _Recorder()
    strategy = RoundOffset(inner, 2)
    strategy.configure_train(1, ArrayRecord(), ConfigRecord(), None)  # type: ignore[arg-type]
    strategy.aggregate_train(1, [])
    assert inner.rounds == [3, 3]


def test_run_state_restores_lineage_and_composes_dp_over_segments(tmp_path: Path) -> None:
    tracked = TrackedStrategy(_Recorder())
    tracked.sites["s"] = SiteLedger("s", 10, "m" * 64, 2, {"steps": 20, "noise-multiplier": 1.0, "sample-rate": 0.1,
                                                              "delta": 1e-5, "epsilon": 1.0})
    tracked.rounds_aggregated = 2
    first = RunState.open(tmp_path, "run1")
    first.dropouts.append({"round": 2, "sites": ["t"]})
    first.save(2, ArrayRecord({"w": torch.ones(2)}), tracked, [{"round": 1}, {"round": 2}])

    resumed = RunState.open(tmp_path, "run1")
    assert resumed.completed == 2 and resumed.dropouts == [{"round": 2, "sites": ["t"]}]
    again, history, model = TrackedStrategy(_Recorder()), [], torch.nn.Linear(1, 1, bias=False)
    model_state = {"weight": torch.zeros(1, 1)}
    resumed.checkpoint.weights.clear()  # type: ignore[union-attr]
    resumed.checkpoint.weights.update(model_state)  # type: ignore[union-attr]
    resumed.restore(model, again, history)
    assert again.rounds_aggregated == 2 and history == [{"round": 1}, {"round": 2}]
    site = again.sites["s"]
    assert resumed.total_dp("s", site) is site.dp  # not reported since the resume: totals as stored
    site.dp = {**site.dp, "steps": 10}  # the new segment's counter restarted: 10 more steps
    total = resumed.total_dp("s", site)
    assert total["steps"] == 30 and total["epsilon"] > 0


class _FakeGrid:
    def __init__(self, batches: list[list[Message]]) -> None:
        self.batches = batches
        self.pulls = 0

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return ["a", "b"]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        return self.batches.pop(0) if self.batches else []


def _reply(to: str) -> Any:
    return SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=to))


def test_responsive_grid_polls_at_its_interval_and_honours_the_timeout() -> None:
    clock = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    grid = ResponsiveGrid(_FakeGrid([[], [_reply("a")], [_reply("b")]]), poll=0.05,  # type: ignore[arg-type]
                          clock=lambda: clock[0], sleep=sleep)
    assert len(list(grid.send_and_receive([], timeout=10))) == 2 and slept == [0.05, 0.05]
    slow = ResponsiveGrid(_FakeGrid([]), poll=0.05, clock=lambda: clock[0], sleep=sleep)  # type: ignore[arg-type]
    assert list(slow.send_and_receive([], timeout=1.0)) == []
    assert clock[0] == pytest.approx(0.1 + 1.0, abs=0.06)


def test_responsive_grid_ends_the_run_once_its_engine_stopped() -> None:
    """A simulation whose engine died: the ServerApp stops at its next pull, not at its deadlines."""
    from coordinator.grid import EngineStopped

    stopped = [False]

    def sleep(seconds: float) -> None:
        stopped[0] = True  # the engine fails while the ServerApp waits for replies

    inner = _FakeGrid([])
    grid = ResponsiveGrid(inner, poll=0.05, sleep=sleep, stopped=lambda: stopped[0])  # type: ignore[arg-type]
    with pytest.raises(EngineStopped, match="engine stopped"):
        list(grid.send_and_receive([], timeout=600))
    assert inner.pulls == 1  # one pull, one wait, then the stop was seen
    with pytest.raises(EngineStopped):
        grid.get_node_ids()  # waiting for sites to connect ends too


def test_resume_refuses_unknown_and_finished_runs(tmp_path: Path) -> None:
    from coordinator.runs.launch import resume_job
    from lifecycle.home import Home

    home = Home(tmp_path)
    with pytest.raises(ConfigurationError, match="no run"):
        resume_job(home, "nope")
    Job.from_mapping({"num-server-rounds": 2}).with_run_id("r1").dump(tmp_path / "runs" / "r1" / "job.toml")
    assert resume_job(home, "r1").run_id == "r1"
    (tmp_path / "runs" / "r1" / "outcome.json").write_text("{}")
    with pytest.raises(ConfigurationError, match="already finished"):
        resume_job(home, "r1")


def test_cli_refuses_bad_jobs_and_unknown_runs_with_exit_code_2(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    job = tmp_path / "job.toml"
    job.write_text("rounds = 3\n")
    env = {**os.environ, "FEDGUARD_HOME": str(tmp_path / "home")}
    env.pop("FEDGUARD_DATABASE_URL", None)
    for args, message in ((["launch", str(job), "--insecure"], "unknown run-config keys"),
                          (["status", "nope"], "no run 'nope'")):
        proc = subprocess.run([sys.executable, "-m", "fedguard.cli", "run", *args], env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_connection_defaults_to_this_machines_federation(tmp_path: Path, fedguard_home: Path) -> None:
    from typer.testing import CliRunner

    from coordinator.runs.launch import resolve_connection
    from fedguard.cli import app
    from lifecycle.home import Home
    from tests.coordinator.federation_fixtures import make_federation

    job = tmp_path / "job.toml"
    job.write_text("num-server-rounds = 1\n")
    result = CliRunner().invoke(app, ["run", "launch", str(job), "--no-follow"], env={
        "FEDGUARD_SUPERLINK": "", "FEDGUARD_SUPERLINK_CA": ""})  # neither flag, variable nor federation
    assert isinstance(result.exception, ConfigurationError)
    assert "--superlink HOST:PORT and --root-certificates" in str(result.exception)
    assert "coordinator init" in str(result.exception)

    fed = make_federation(tmp_path)
    port = fed.layout.read_config().superlink_port
    home = Home(fed.home)
    found = resolve_connection(home, "f", None, None)
    assert (found.address, found.root_certificates) == (f"127.0.0.1:{port}", fed.layout.ca_cert)
    found.validate()  # the CA file exists
    ca = tmp_path / "other.crt"
    given = resolve_connection(home, "f", "coord.example:9", ca)  # what is given wins
    assert (given.address, given.root_certificates) == ("coord.example:9", ca)
    assert resolve_connection(home, "f", "x:1", None).root_certificates == fed.layout.ca_cert
    insecure = resolve_connection(home, "f", None, None, insecure=True)
    assert insecure.root_certificates is None and insecure.address == f"127.0.0.1:{port}"


def test_flower_run_ids_are_read_from_flwr_json_and_recorded_per_run(tmp_path: Path) -> None:
    """``flwr run --format json`` prints a pretty-printed object; its run id is kept for a later resume."""
    printed = ('Note: building the FAB\n{\n  "success": true,\n  "run-id": "18149059001461348770",\n'
               '  "federation-id": "@none/default"\n}\n')
    assert flower_run_id(_json_reply(printed)) == 18149059001461348770
    assert flower_run_id(_json_reply("Successfully started run 12")) is None  # no JSON: no guess
    assert flower_run_id(_json_reply('{"success": false, "error-message": "refused"}')) is None
    assert _json_reply("{ torn") == {}
    home = Home(tmp_path)
    assert flower_runs(home, "abc") == []
    _record_flower_run(home, "abc", 7)
    _record_flower_run(home, "abc", 9)
    assert flower_runs(home, "abc") == [7, 9]
    path = tmp_path / "runs" / "abc" / "flower-runs.json"
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text("{not a list")
    with pytest.raises(StateError, match="flower-runs.json"):
        flower_runs(home, "abc")


def test_status_reports_the_current_segment_not_an_earlier_failure(tmp_path: Path) -> None:
    from coordinator.run_cli import _status

    home = Home(tmp_path)
    directory = tmp_path / "runs" / "r2"
    Job.from_mapping({"num-server-rounds": 3}).with_run_id("r2").dump(directory / "job.toml")
    _record_flower_run(home, "r2", 11)
    log = ProgressLog(directory / "progress.jsonl")
    log("round", {"round": 1})
    log("failed", {"error": "killed", "flower_run": 11})
    assert _status(home, "r2")["state"] == "failed"
    _record_flower_run(home, "r2", 22)  # resumed: the failure above belongs to the stopped segment
    log("round", {"round": 2})
    info = _status(home, "r2")
    assert (info["state"], info["flower_runs"]) == ("started", [11, 22])
    log("done", {"model": "m", "version": 4})
    assert (_status(home, "r2")["state"], _status(home, "r2")["model"]) == ("done", "m:4")
