"""The site's SuperNode runtime: Flower's SuperNode with a warm, forking ClientApp executor.

``python -m client.runtime <flower-supernode arguments>`` is a drop-in for
``flower-supernode`` that removes the per-message overhead (see
:mod:`lifecycle.runtime_options` for the measured causes):

1. It starts the SuperNode with ``--isolation process`` and its Runtime API
   on a free loopback port, and launches :func:`serve_executor` beside it
   (``python -m client.runtime executor ...``), which imports torch, Opacus
   and the ClientApp once and then, for every task the SuperNode hands out,
   forks a child that runs Flower's own ``run_clientapp`` (pull the message,
   run the app, push the reply, exit). The child starts in milliseconds with
   everything imported; each message is still handled in its own process,
   as with Flower's subprocess isolation.
2. The SuperNode's idle pull interval becomes
   :data:`lifecycle.runtime_options.SUPERNODE_POLL_SECONDS` instead of 3 s.
   Flower has no option for it, so this entry point wraps
   ``flower_supernode()`` with the module's ``time.sleep`` capped; nothing
   in site-packages is edited.

The ClientApp that runs is the one installed at the site (preloaded), not
code shipped in the run's FAB: a coordinator cannot make a site execute new
code. The executor exits with the SuperNode (``--parent-pid``). The
Runtime API is on loopback; with process isolation Flower can require an
HMAC shared secret from whoever acquires tasks, and this entry point always
sets one (a fresh random file, 0600, unless ``--superexec-auth-secret-file``
is given), so another local process cannot take the site's messages.
"""

from __future__ import annotations

import argparse
import importlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from client import logger
from lifecycle.runtime_options import EXECUTOR_POLL_SECONDS, PRELOAD_MODULES, SUPERNODE_POLL_SECONDS


def _capped_sleep(cap: float, sleep: Callable[[float], None] = time.sleep) -> Callable[[float], None]:
    def capped(seconds: float) -> None:
        sleep(min(seconds, cap))

    return capped


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _option(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def supernode_argv(argv: Sequence[str], port: int) -> list[str]:
    """``argv`` with process isolation and the Runtime API on ``127.0.0.1:port`` (unless given)."""
    out = [a for a in argv]
    if _option(out, "--isolation") is None:
        out += ["--isolation", "process"]
    if _option(out, "--host") is None:
        out += ["--host", "127.0.0.1"]
    if _option(out, "--port") is None:
        out += ["--port", str(port)]
    return out


def _auth_secret(args: list[str]) -> str:
    """The SuperExec auth secret file named in ``args``, or a fresh one (added to ``args``)."""
    given = _option(args, "--superexec-auth-secret-file")
    if given is not None:
        return given
    fd, path = tempfile.mkstemp(prefix="fedguard-superexec-", suffix=".secret")
    with os.fdopen(fd, "wb") as handle:  # mkstemp creates it 0600
        handle.write(secrets.token_bytes(32))
    args += ["--superexec-auth-secret-file", path]
    return path


def run_supernode(argv: Sequence[str]) -> None:
    """Start the warm executor, then run Flower's SuperNode in this process (blocks)."""
    import flwr.supernode.start_client_internal as internal
    from flwr.supernode.cli.flower_supernode import flower_supernode

    args = supernode_argv(argv, _free_loopback_port())
    own_secret = _option(args, "--superexec-auth-secret-file") is None
    secret = _auth_secret(args)
    if _option(args, "--isolation") != "process":
        raise SystemExit("client.runtime needs --isolation process (its executor runs the ClientApp)")
    address = f"{_option(args, '--host')}:{_option(args, '--port')}"
    tls = ["--root-certificates", ca] if (ca := _option(args, "--ssl-ca-certfile")) else ["--insecure"]
    executor = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "client.runtime", "executor", "--runtime-api-address", address,
         "--parent-pid", str(os.getpid()), "--superexec-auth-secret-file", secret, *tls],
    )
    logger.info("warm ClientApp executor pid %d on Runtime API %s", executor.pid, address)
    internal.time = SimpleNamespace(  # type: ignore[attr-defined]
        **{name: getattr(time, name) for name in ("time", "monotonic", "perf_counter")},
        sleep=_capped_sleep(SUPERNODE_POLL_SECONDS),
    )
    sys.argv = ["flower-supernode", *args]
    try:
        flower_supernode()
    finally:
        executor.terminate()
        if own_secret:
            os.unlink(secret)


class ForkExecutor:
    """Runs each ClientApp task in a forked child of this (preloaded) process.

    Implements Flower's SuperExec ``Executor`` protocol, so Flower's own
    plugin builds the execution spec; only ``launch`` differs from
    ``SubprocessExecutor`` (fork and call ``run_clientapp`` instead of
    ``exec flwr-clientapp``).
    """

    def __init__(self) -> None:
        self.children: set[int] = set()

    def get_eligible_capacity(self, supported_task_types: set[str], **_: object) -> tuple[set[str], set[str]]:
        from flwr.supercore.constant import TaskType

        return {t for t in supported_task_types if t == TaskType.CLIENT_APP}, set()

    def wait_for_capacity(self, *_: object, **__: object) -> None:
        return None

    def launch(self, spec: object) -> object:
        from flwr.supercore.superexec.executor import LaunchResult
        from flwr.supercore.tls import validate_and_resolve_root_certificates
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        pid = os.fork()
        if pid:
            self.children.add(pid)
            return LaunchResult.accepted()
        code = 1
        try:  # the child: Flower's ClientApp process body, then exit without running the parent's handlers
            run_clientapp(
                runtime_api_address=spec.runtime_api_address, token=spec.token,  # type: ignore[attr-defined]
                insecure=spec.insecure,  # type: ignore[attr-defined]
                certificates=validate_and_resolve_root_certificates(
                    spec.root_certificates_path, spec.insecure),  # type: ignore[attr-defined]
                parent_pid=None, runtime_dependency_install=False,
            )
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 0
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def reconcile(self) -> None:
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.discard(pid)

    def close(self) -> None:
        self.reconcile()


def serve_executor(address: str, *, insecure: bool, root_certificates: str | None, parent_pid: int | None,
                   secret_file: str | None = None, poll: float = EXECUTOR_POLL_SECONDS,
                   preload: Sequence[str] = PRELOAD_MODULES) -> None:
    """Preload ``preload``, then acquire ClientApp tasks from the Runtime API and fork one child each."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supercore.auth import load_superexec_auth_secret
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.superexec.plugin import AutoExecPlugin
    from flwr.supercore.tls import validate_and_resolve_root_certificates

    for module in preload:
        importlib.import_module(module)
    if parent_pid is not None:
        start_parent_process_monitor(parent_pid)
    executor = ForkExecutor()
    interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    secret = load_superexec_auth_secret(secret_file)
    if secret:
        interceptors.append(SuperExecAuthHttpInterceptor(
            master_secret=secret, protected_methods=frozenset({"/flwr.proto.Runtime/AcquireTask"})))
    client = RuntimeHttpClient.from_server_address(
        server_address=address, insecure=insecure,
        root_certificates=validate_and_resolve_root_certificates(root_certificates, insecure),
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )
    plugin = AutoExecPlugin(runtime_api_address=address, insecure=insecure, root_certificates_path=root_certificates,
                            runtime_dependency_install=False, executor=executor)  # type: ignore[arg-type]
    logger.info("warm executor ready (%s preloaded)", ", ".join(preload))
    while True:
        executor.reconcile()
        types, hashes = executor.get_eligible_capacity(set(plugin.supported_task_types))
        res = client.AcquireTask(AcquireTaskRequest(supported_task_types=types, agentapp_fab_hashes=hashes))
        if res.HasField("task") and res.token:
            plugin.launch_task(token=res.token, task=res.task)
            continue
        time.sleep(poll)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m client.runtime [flower-supernode args]`` or ``python -m client.runtime executor ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["executor"]:
        parser = argparse.ArgumentParser(prog="python -m client.runtime executor")
        parser.add_argument("--runtime-api-address", required=True)
        parser.add_argument("--insecure", action="store_true")
        parser.add_argument("--root-certificates")
        parser.add_argument("--parent-pid", type=int)
        parser.add_argument("--superexec-auth-secret-file")
        ns = parser.parse_args(argv[1:])
        serve_executor(ns.runtime_api_address, insecure=ns.insecure, root_certificates=ns.root_certificates,
                       parent_pid=ns.parent_pid, secret_file=ns.superexec_auth_secret_file)
        return
    run_supernode(argv)


if __name__ == "__main__":
    main()
