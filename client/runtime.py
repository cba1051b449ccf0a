"""The site's SuperNode runtime: Flower's SuperNode with a warm, forking ClientApp executor.

``python -m client.runtime <flower-supernode arguments>`` is a drop-in for
``flower-supernode`` that removes the per-message overhead (see
:mod:`federation.runtime_options` for the measured causes):

1. It starts the SuperNode with ``--isolation process`` and its Runtime API
   on a free loopback port, and launches :func:`serve_executor` beside it
   (``python -m client.runtime executor ...``), which imports torch, Opacus
   and the ClientApp once and then, for every task the SuperNode hands out,
   forks a child that runs Flower's own ``run_clientapp`` (pull the message,
   run the app, push the reply, exit). The child starts in milliseconds with
   everything imported; each message is still handled in its own process,
   as with Flower's subprocess isolation.
2. The SuperNode's idle pull interval becomes
   :data:`federation.runtime_options.SUPERNODE_POLL_SECONDS` instead of 3 s.
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
import contextlib
import hashlib
import importlib
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from client import logger
from client.runtime_options import (
    EXECUTOR_IDLE_POLL_SECONDS,
    EXECUTOR_POLL_SECONDS,
    PRELOAD_MODULES,
    SUPERNODE_ACTIVE_SECONDS,
    SUPERNODE_IDLE_POLL_SECONDS,
    SUPERNODE_POLL_SECONDS,
)
from federation.runtime_options import TRACE_ENV, trace, trace_rpcs, use_fast_pulls, with_fast_pulls


def _capped_sleep(cap: float, sleep: Callable[[float], None] = time.sleep) -> Callable[[float], None]:
    def capped(seconds: float) -> None:
        sleep(min(seconds, cap))

    return capped


def cached_fab_install(install: Callable[..., Path], cache_dir: Path) -> Callable[..., Path]:
    """``install`` (Flower's ``install_from_fab``) that unpacks each FAB once per site, keyed by its SHA-256.

    Flower unzips and re-verifies the run's FAB in every ClientApp process
    (0.2–0.5 s per message measured here) although it installs a given FAB
    hash only once. The first install writes ``cache_dir/<sha256>`` naming the
    installed directory; later messages of the run return that directory
    without unpacking. The key is the hash of the bytes received, so a
    different FAB is always installed (and verified) afresh.
    """

    def install_once(fab_file: Path | bytes, install_dir: Path | None = None, skip_prompt: bool = False) -> Path:
        if not isinstance(fab_file, bytes) or install_dir is not None:
            return install(fab_file, install_dir, skip_prompt)
        marker = cache_dir / hashlib.sha256(fab_file).hexdigest()
        if marker.is_file() and (installed := Path(marker.read_text(encoding="utf-8"))).is_dir():
            return installed
        installed = install(fab_file, install_dir, skip_prompt)
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
        partial.write_text(str(installed), encoding="utf-8")
        os.replace(partial, marker)  # atomic: concurrent children never read half a path
        return installed

    return install_once


def _traced(module: Any, name: str, component: str, *, skip_none: bool = False) -> None:
    """Replace ``module.name`` by a wrapper that traces its start and end (see ``TRACE_ENV``)."""
    inner = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.time()
        result = inner(*args, **kwargs)
        if not (skip_none and result is None):
            trace(component, name, start=started, seconds=round(time.time() - started, 4))
        return result

    setattr(module, name, wrapper)


def _trace_supernode(internal: Any) -> None:
    """Trace the SuperNode's pulls (that returned a message) and pushes to the SuperLink, and each request."""
    trace_rpcs("supernode")
    _traced(internal, "_pull_and_store_message", "supernode", skip_none=True)
    _traced(internal, "_push_messages", "supernode")


def _trace_clientapp() -> None:
    """Trace the stages of Flower's ``run_clientapp`` in this (forked) process, and each request."""
    import flwr.supernode.runtime.run_clientapp as clientapp_module

    # Patched where run_clientapp looks its helpers up: names it imports without re-exporting
    # them, which mypy's strict re-export rule hides, so the module is addressed as Any.
    body: Any = clientapp_module

    trace_rpcs("clientapp")

    for name in ("pull_task_input", "install_from_fab", "push_message"):
        _traced(body, name, "clientapp")
    make_loader = body.get_load_client_app_fn

    def traced_loader(*args: Any, **kwargs: Any) -> Any:
        load = make_loader(*args, **kwargs)

        def traced_load(*a: Any, **k: Any) -> Any:
            started = time.time()
            app = load(*a, **k)
            trace("clientapp", "load_client_app", start=started, seconds=round(time.time() - started, 4))
            call = app.__call__

            class Traced:
                def __call__(self, message: Any, context: Any) -> Any:
                    begun = time.time()
                    reply = call(message=message, context=context)
                    trace("clientapp", "handler", start=begun, seconds=round(time.time() - begun, 4),
                          kind=message.metadata.message_type, group=message.metadata.group_id)
                    return reply

            return Traced()

        return traced_load

    body.get_load_client_app_fn = traced_loader


class IdlePacer:
    """The SuperNode's idle pull interval: short while a run is exchanging messages, longer when idle.

    Flower sleeps 3 s after every empty pull of the SuperLink. Within a round
    the exchanges (SecAgg+: four) follow each other in well under a second,
    so fedguard pulls every :data:`~federation.runtime_options.SUPERNODE_POLL_SECONDS`
    for :data:`~federation.runtime_options.SUPERNODE_ACTIVE_SECONDS` after the
    last message, then every :data:`~federation.runtime_options.SUPERNODE_IDLE_POLL_SECONDS`
    (an idle site then costs the SuperLink one TLS request a second, not ten).
    """

    def __init__(self, *, fast: float = SUPERNODE_POLL_SECONDS, idle: float = SUPERNODE_IDLE_POLL_SECONDS,
                 active_for: float = SUPERNODE_ACTIVE_SECONDS, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.fast, self.idle, self.active_for = fast, idle, active_for
        self._clock, self._sleep = clock, sleep
        self._last = clock()

    def active(self) -> None:
        """A message arrived: poll fast again."""
        self._last = self._clock()

    def interval(self) -> float:
        return self.fast if self._clock() - self._last < self.active_for else self.idle

    def sleep(self, seconds: float) -> None:
        self._sleep(min(seconds, self.interval()))


_STOPPING = threading.Event()
STOP_GRACE_SECONDS = 2.0
"""How long the executor's watcher waits for the SuperNode's own stop before stopping it (see :func:`_exit_with`)."""


def _exit_with(executor: subprocess.Popen[bytes]) -> None:
    """Stop this SuperNode if its executor dies: without it no message would ever be answered."""
    code = executor.wait()
    # A stop of the whole site (SIGTERM to its process group) reaches the executor too: give the SuperNode's
    # own handler a moment to begin its graceful exit; a second SIGTERM would kill it before it cleans up.
    if _STOPPING.wait(STOP_GRACE_SECONDS):
        return
    logger.error("the warm ClientApp executor exited (code %s): stopping the SuperNode; restart the site", code)
    os.kill(os.getpid(), signal.SIGTERM)


def _wake(fd: int) -> None:
    """Tell the executor a task may be waiting (non-blocking: a full pipe already says so)."""
    try:
        os.write(fd, b"!")
    except (BlockingIOError, BrokenPipeError, OSError):
        pass


def _wait_for_wake(fd: int | None, timeout: float) -> None:
    """Block until the SuperNode writes to ``fd`` (drained) or ``timeout`` passes."""
    if fd is None:
        time.sleep(timeout)
        return
    ready, _, _ = select.select([fd], [], [], timeout)
    if ready:
        try:
            os.read(fd, 4096)
        except BlockingIOError:
            pass


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
    import flwr.supernode.start_client_internal as start_client_internal
    from flwr.supercore.exit import add_exit_handler
    from flwr.supernode.cli.flower_supernode import flower_supernode

    args = supernode_argv(argv, _free_loopback_port())
    own_secret = _option(args, "--superexec-auth-secret-file") is None
    secret = _auth_secret(args)
    if _option(args, "--isolation") != "process":
        raise SystemExit("client.runtime needs --isolation process (its executor runs the ClientApp)")
    address = f"{_option(args, '--host')}:{_option(args, '--port')}"
    tls = ["--root-certificates", ca] if (ca := _option(args, "--ssl-ca-certfile")) else ["--insecure"]
    wake_read, wake_write = os.pipe()
    executor = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "client.runtime", "executor", "--runtime-api-address", address,
         "--parent-pid", str(os.getpid()), "--superexec-auth-secret-file", secret, "--wake-fd", str(wake_read),
         *tls],
        pass_fds=(wake_read,),
    )
    os.close(wake_read)
    os.set_blocking(wake_write, False)
    logger.info("warm ClientApp executor pid %d on Runtime API %s", executor.pid, address)
    threading.Thread(target=_exit_with, args=(executor,), daemon=True, name="executor-watch").start()
    pacer = IdlePacer()
    # Flower's SuperNode loop is patched in place: its ``time`` module and ``pull_objects`` (imported
    # there, not re-exported) are replaced by ours, so the module is addressed as Any.
    internal: Any = start_client_internal
    internal.time = SimpleNamespace(
        **{name: getattr(time, name) for name in ("time", "monotonic", "perf_counter")},
        sleep=pacer.sleep,
    )
    pull = with_fast_pulls(internal.pull_objects)

    def pull_and_wake(*a: Any, **k: Any) -> Any:
        # Flower calls pull_objects right after storing a new message (its task now exists): wake the
        # executor so that it forks the ClientApp while the message's objects are still arriving.
        pacer.active()
        _wake(wake_write)
        return pull(*a, **k)

    internal.pull_objects = pull_and_wake  # the SuperNode's pulls from the SuperLink
    if os.environ.get(TRACE_ENV):
        _trace_supernode(internal)
    def cleanup() -> None:
        _STOPPING.set()
        if own_secret:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(secret)

    # Flower's signal handler runs its exit handlers first, then exits: the secret goes even on SIGTERM
    add_exit_handler(cleanup, run_before_force_exit=True)
    sys.argv = ["flower-supernode", *args]
    try:
        flower_supernode()
    finally:
        cleanup()
        os.close(wake_write)
        executor.terminate()


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

        trace("executor", "fork")
        executor_pid = os.getpid()
        pid = os.fork()
        if pid:
            self.children.add(pid)
            return LaunchResult.accepted()
        code = 1
        try:  # the child: Flower's ClientApp process body, then exit without running the parent's handlers
            trace("clientapp", "forked")
            if os.environ.get(TRACE_ENV):
                _trace_clientapp()
            run_clientapp(
                runtime_api_address=spec.runtime_api_address, token=spec.token,  # type: ignore[attr-defined]
                insecure=spec.insecure,  # type: ignore[attr-defined]
                certificates=validate_and_resolve_root_certificates(
                    spec.root_certificates_path, spec.insecure),  # type: ignore[attr-defined]
                # a fork inherits no thread, so not the executor's parent monitor: the child watches the
                # executor itself, or a child whose SuperNode is gone retries its Runtime API forever
                parent_pid=executor_pid, runtime_dependency_install=False,
            )
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 0
        finally:
            trace("clientapp", "exit", code=code)
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
        """Reap finished children and ask the rest to stop (Flower's ClientApp handles SIGTERM)."""
        self.reconcile()
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def serve_executor(address: str, *, insecure: bool, root_certificates: str | None, parent_pid: int | None,
                   secret_file: str | None = None, poll: float = EXECUTOR_POLL_SECONDS,
                   preload: Sequence[str] = PRELOAD_MODULES, wake_fd: int | None = None) -> None:
    """Preload ``preload``, then acquire ClientApp tasks from the Runtime API and fork one child each.

    With ``wake_fd`` (a pipe from :func:`run_supernode`) the executor asks
    for a task only when the SuperNode says a message arrived, or every
    :data:`~federation.runtime_options.EXECUTOR_IDLE_POLL_SECONDS` as a
    safety net; polling every 50 ms instead cost ~14 % of a core per idle
    site here. Without it, it polls every ``poll`` seconds.
    """
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
    import flwr.supernode.runtime.run_clientapp as clientapp_module
    from flwr.supercore.utils import get_flwr_home

    # Patched where run_clientapp looks them up (``install_from_fab`` is imported there, not
    # re-exported, which mypy's strict re-export rule hides), so the module is addressed as Any.
    body: Any = clientapp_module

    use_fast_pulls(body, "pull_and_inflate_object_from_tree")  # each child's pull from its SuperNode
    body.install_from_fab = cached_fab_install(body.install_from_fab, get_flwr_home() / "fedguard-fab-cache")
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
    try:
        while True:
            executor.reconcile()
            types, hashes = executor.get_eligible_capacity(set(plugin.supported_task_types))
            res = client.AcquireTask(AcquireTaskRequest(supported_task_types=types, agentapp_fab_hashes=hashes))
            if res.HasField("task") and res.token:
                plugin.launch_task(token=res.token, task=res.task)
                continue
            _wait_for_wake(wake_fd, poll if wake_fd is None else EXECUTOR_IDLE_POLL_SECONDS)
    finally:
        executor.close()


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
        parser.add_argument("--wake-fd", type=int, help="pipe on which the SuperNode signals new messages")
        ns = parser.parse_args(argv[1:])
        serve_executor(ns.runtime_api_address, insecure=ns.insecure, root_certificates=ns.root_certificates,
                       parent_pid=ns.parent_pid, secret_file=ns.superexec_auth_secret_file, wake_fd=ns.wake_fd)
        return
    run_supernode(argv)


if __name__ == "__main__":
    main()
