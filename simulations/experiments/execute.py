"""Run one trial's simulation as a child process, from inside a Ray Tune worker.

The child (``python -m simulations.experiments.trial``) gets a clean
environment: its own ``FEDGUARD_HOME`` under the trial's work folder (own
SQLite registry, keys and Ray temp dir), none of the variables Ray sets for
its workers (``RAY_JOB_ID``, ``CUDA_VISIBLE_DEVICES=""``, ``OMP_NUM_THREADS=1``
...) but the driver's own values of them, and ``RAY_ADDRESS`` only when the
sweep was given a cluster and the simulation can attach to one (its
``ray-address`` setting). Without that, Flower starts a local Ray of the
child's own, which inside a Tune worker is the only safe choice: attaching
with ``num_cpus`` set is refused by Ray, and Flower shuts down the Ray it
used when the simulation ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simulations.experiments.records import make_record
from simulations.experiments.trial import last_line

TRIAL_MODULE = "simulations.experiments.trial"
WORKER_VARIABLES = ("PYTHONBREAKPOINT", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "FEDGUARD_DATABASE_URL")
"""Set by Ray for its workers (or, the database, shared by the driver): never inherited by a trial."""


def driver_environment() -> dict[str, str]:
    """The driver's own values of what Ray overrides in its workers, to give back to each trial."""
    return {k: v for k, v in os.environ.items()
            if (k.startswith("RAY_") and k not in ("RAY_ADDRESS", "RAY_TMPDIR"))
            or k in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")}


def child_environment(home: Path, driver: Mapping[str, str], ray_address: str) -> dict[str, str]:
    """The environment of a trial's process (see the module docstring)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k not in WORKER_VARIABLES}
    env.update(driver)
    env["FEDGUARD_HOME"] = str(home)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    return env


def execute(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Run the trial of ``spec`` in a child process and return its record; a crash becomes a failed record.

    ``spec``: ``id``, ``settings``, ``extra`` (settings outside the id),
    ``work`` (the trial's folder, emptied first: a trial interrupted earlier
    starts afresh), ``env`` (:func:`driver_environment`), ``ray_address``,
    ``timeout`` (seconds, 0 for none: the trial and its process group are
    killed and the trial recorded as failed).
    """
    work = Path(spec["work"])
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec_path, record_path, log_path = work / "spec.json", work / "record.json", work / "trial.log"
    spec_path.write_text(json.dumps(dict(spec), indent=2), encoding="utf-8")
    env = child_environment(work / "home", spec.get("env", {}), str(spec.get("ray_address", "")))
    started = time.monotonic()
    timeout = float(spec.get("timeout") or 0) or None
    with log_path.open("w", encoding="utf-8") as log:
        child = subprocess.Popen([sys.executable, "-m", TRIAL_MODULE, str(spec_path), str(record_path)], cwd=work,
                                 env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # the trial and what it started (its local Ray) go together
            _stop_group(child.pid)
            child.wait()
            return make_record(str(spec["id"]), spec["settings"], "failed", seconds=time.monotonic() - started,
                               error=f"timed out after {timeout:g} s (--trial-timeout); see {log_path}")
        finally:
            _stop_group(child.pid)  # interrupted, or a local Ray the trial left behind: leave nothing running
    if record_path.exists():
        record: dict[str, Any] = json.loads(record_path.read_text(encoding="utf-8"))
        return record
    tail = last_line(log_path.read_text(encoding="utf-8", errors="replace"))
    return make_record(str(spec["id"]), spec["settings"], "failed", seconds=time.monotonic() - started,
                       error=f"the trial's process exited with code {code}: {tail}")


def _stop_group(pgid: int) -> None:
    """Kill what is left of a trial's process group (the trial leads its own session)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
