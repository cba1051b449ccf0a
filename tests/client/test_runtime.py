"""The site runtime's argument handling and idle-poll cap (the processes run in tests/integration)."""

from __future__ import annotations

from client.runtime import ForkExecutor, _capped_sleep, supernode_argv
from client.runtime_options import SUPERNODE_POLL_SECONDS, supernode_command, supernode_env


def test_supernode_argv_adds_process_isolation_and_a_loopback_runtime_port() -> None:
    argv = supernode_argv(["--superlink", "h:1", "--root-certificates", "ca.crt"], 4321)
    assert argv[:4] == ["--superlink", "h:1", "--root-certificates", "ca.crt"]
    assert argv[4:] == ["--isolation", "process", "--host", "127.0.0.1", "--port", "4321"]
    assert supernode_argv(["--port=99", "--isolation", "process"], 1).count("--port=99") == 1
    assert "--port" not in supernode_argv(["--port=99"], 1)


def test_idle_sleep_is_capped_but_short_sleeps_are_kept() -> None:
    slept: list[float] = []
    capped = _capped_sleep(SUPERNODE_POLL_SECONDS, slept.append)
    capped(3.0)
    capped(0.01)
    assert slept == [SUPERNODE_POLL_SECONDS, 0.01]


def test_executor_only_takes_clientapp_tasks_and_options_are_quiet() -> None:
    eligible, hashes = ForkExecutor().get_eligible_capacity({"flwr-clientapp", "flwr-serverapp"})
    assert eligible == {"flwr-clientapp"} and hashes == set()
    env = supernode_env({})
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and float(env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"]) < 1
    assert supernode_command("py") == ["py", "-m", "client.runtime"]


def test_runtime_api_secret_is_fresh_private_and_passed_to_the_supernode() -> None:
    import os
    import stat

    from client.runtime import _auth_secret

    args = ["--superlink", "h:1"]
    path = _auth_secret(args)
    try:
        assert args[-2:] == ["--superexec-auth-secret-file", path]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(open(path, "rb").read()) == 32
        assert _auth_secret(["--superexec-auth-secret-file", "mine"]) == "mine"
    finally:
        os.unlink(path)


def test_idle_pacer_polls_fast_while_a_run_exchanges_messages_then_slows_down() -> None:
    from client.runtime import IdlePacer

    now = [0.0]
    slept: list[float] = []
    pacer = IdlePacer(fast=0.1, idle=1.0, active_for=30.0, clock=lambda: now[0], sleep=slept.append)
    pacer.sleep(3.0)  # just started: fast
    now[0] = 31.0
    pacer.sleep(3.0)  # nothing for 31 s: idle
    pacer.active()
    pacer.sleep(3.0)  # a message arrived: fast again
    pacer.sleep(0.01)  # Flower's own short waits are kept
    assert slept == [0.1, 1.0, 0.1, 0.01]


def test_fab_is_unpacked_once_per_hash(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from client.runtime import cached_fab_install

    installs: list[bytes] = []

    def install(fab: bytes, install_dir: object = None, skip_prompt: bool = False) -> object:
        installs.append(fab)
        target = tmp_path / "apps" / str(len(installs))
        target.mkdir(parents=True)
        return target

    once = cached_fab_install(install, tmp_path / "cache")  # type: ignore[arg-type]
    first = once(b"fab-1", skip_prompt=True)
    assert once(b"fab-1", skip_prompt=True) == first and installs == [b"fab-1"]
    assert once(b"fab-2", skip_prompt=True) != first and installs == [b"fab-1", b"fab-2"]
    first.rmdir()  # the installed app was removed: install again rather than return a missing directory
    assert once(b"fab-1", skip_prompt=True).is_dir() and len(installs) == 3
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_object_pulls_retry_quickly_and_explicit_arguments_win() -> None:
    from federation.runtime_options import OBJECT_PULL_BACKOFF, with_fast_pulls

    seen: list[dict[str, object]] = []
    fast = with_fast_pulls(lambda *a, **k: seen.append(k))
    fast(["id"], None)
    fast(["id"], None, initial_backoff=2.0)
    assert seen[0] == dict(OBJECT_PULL_BACKOFF) and float(seen[0]["initial_backoff"]) < 1  # type: ignore[arg-type]
    assert seen[0]["max_tries_per_object"] is None  # only Flower's overall time limit applies
    assert seen[1]["initial_backoff"] == 2.0
    assert with_fast_pulls(fast) is fast


def test_executor_wakes_on_the_supernodes_signal_not_on_a_timer() -> None:
    import os
    import time

    from client.runtime import _wait_for_wake, _wake

    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        _wake(write)
        _wake(write)
        started = time.monotonic()
        _wait_for_wake(read, 5.0)  # returns at once, and drains both signals
        assert time.monotonic() - started < 1.0
        started = time.monotonic()
        _wait_for_wake(read, 0.05)  # nothing pending: waits for the timeout only
        assert 0.04 <= time.monotonic() - started < 1.0
    finally:
        os.close(read)
        os.close(write)


def test_trace_appends_one_json_line_per_stage_only_when_asked(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json

    from federation.runtime_options import TRACE_ENV, trace

    monkeypatch.delenv(TRACE_ENV, raising=False)
    trace("grid", "push")
    path = tmp_path / "trace.jsonl"
    monkeypatch.setenv(TRACE_ENV, str(path))
    trace("grid", "push", kind="train", n=3)
    trace("clientapp", "handler", seconds=0.5)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(x["component"], x["stage"]) for x in lines] == [("grid", "push"), ("clientapp", "handler")]
    assert lines[0]["kind"] == "train" and lines[0]["n"] == 3 and lines[1]["seconds"] == 0.5


def test_traced_requests_name_their_method_and_time(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json

    from flwr.proto.fleet_pb2 import PullMessagesRequest
    from flwr.supercore.protobuf import client as protobuf_client

    from federation.runtime_options import TRACE_ENV, trace_rpcs

    calls: list[str] = []

    def fake_send(self: object, **kwargs: object) -> str:
        calls.append(str(kwargs["rpc_method"]))
        return "response"

    monkeypatch.setattr(protobuf_client.ProtobufClient, "_unary_unary", fake_send)
    trace_rpcs("supernode")  # tracing off: nothing changes
    assert protobuf_client.ProtobufClient._unary_unary is fake_send
    log = tmp_path / "trace.jsonl"
    monkeypatch.setenv(TRACE_ENV, str(log))
    trace_rpcs("supernode")
    trace_rpcs("supernode")  # idempotent
    request = PullMessagesRequest()
    out = protobuf_client.ProtobufClient._unary_unary(object(), path="/x", rpc_method="/flwr.proto.Fleet/PullMessages",
                                                      request=request, response_type=object)
    assert out == "response" and calls == ["/flwr.proto.Fleet/PullMessages"]
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert line["component"] == "supernode" and line["stage"] == "rpc" and line["method"] == "PullMessages"
    assert line["seconds"] >= 0 and line["bytes"] == request.ByteSize()


PRELOAD_PROBE = """
import importlib, json, sys
from pathlib import Path
from client.runtime_options import PRELOAD_MODULES
for name in PRELOAD_MODULES:
    importlib.import_module(name)
import numpy as np, torch
from client.config import TrainConfig
from client.training import plan_for, train_locally
from lifecycle.architecture import ModelSpec, build_model
from federation.tabular import TabularData
rng = np.random.default_rng(0)
data = TabularData(rng.normal(size=(40, 5)).astype(np.float32), (np.arange(40) % 2).astype(np.int64), "m", Path("x"))
cfg = TrainConfig(server_round=1, total_rounds=1, local_epochs=1, batch_size=8, lr=0.1, dp_epsilon=3.0, dp_delta=1e-5,
                  max_grad_norm=1.0, features=tuple("abcde"), target="y", spec=ModelSpec(5, 2, (4,)), seed=0)
plan = plan_for(cfg, data)
before = set(sys.modules)
train_locally(build_model(cfg.spec), data, cfg, plan, generator=torch.Generator().manual_seed(0))
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_preloaded_executor_trains_without_importing_more_of_torch() -> None:
    """Each forked child used to import ``torch._dynamo`` (~190 modules, ~0.5 s of CPU) at its first optimizer."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", PRELOAD_PROBE], cwd=repo, capture_output=True, text=True,
                         timeout=120, check=True)
    imported = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = ("torch._dynamo", "torch._inductor", "torch._functorch", "torch.fx", "opacus")
    assert [m for m in imported if m.startswith(heavy)] == [] and len(imported) <= 3, imported


_ORPHAN = """
import os, socket, sys
from types import SimpleNamespace
from client.runtime import ForkExecutor
with socket.socket() as s:  # a Runtime API that is gone: the child's pulls are refused and retried forever
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
executor = ForkExecutor()
executor.launch(SimpleNamespace(runtime_api_address=f"127.0.0.1:{port}", token="t", insecure=True,
                                root_certificates_path=None))
print(*executor.children, flush=True)
os._exit(0)  # the executor dies as under SIGKILL: nothing of its own gets to clean up
"""


def test_a_forked_clientapp_does_not_outlive_its_executor() -> None:
    """A ClientApp child stops within seconds of its executor's death, even while it retries its SuperNode."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    # stdout is read line by line: the child inherits the pipe, so it reaches EOF only when the child is gone
    executor = subprocess.Popen([sys.executable, "-c", _ORPHAN], stdout=subprocess.PIPE, text=True)
    assert executor.stdout is not None
    child = int(executor.stdout.readline())
    assert executor.wait(60) == 0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except FileNotFoundError:
            stat = ") Z"
        if stat[stat.rfind(")") + 2:].startswith("Z"):  # gone, or exited and not yet reaped by its new parent
            executor.stdout.close()
            return
        time.sleep(0.1)
    os.kill(child, 9)
    executor.stdout.close()
    raise AssertionError(f"the ClientApp child {child} outlived its executor by 15 s")
