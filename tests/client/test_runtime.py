"""The site runtime's argument handling and idle-poll cap (the processes run in tests/integration)."""

from __future__ import annotations

from client.runtime import ForkExecutor, _capped_sleep, supernode_argv
from lifecycle.runtime_options import SUPERNODE_POLL_SECONDS, supernode_command, supernode_env


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
