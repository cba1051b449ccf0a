"""One trial in a process of its own: ``python -m simulations.experiments.trial SPEC.json RECORD.json``.

Why a process and not a call inside the Tune worker: Flower's Ray backend
starts Ray when it finds none and shuts it down when the simulation ends,
which inside a Tune worker would take the sweep's Ray down with it. A
process of its own also gives each trial its own ``FEDGUARD_HOME`` (registry,
keys, Ray temp dir), so trials never share state, and a crash or a leak in
one cannot reach another.

The spec holds the trial's ``id``, its grid ``settings`` and ``extra``
settings that are not part of its identity (the cluster address). The
record written tells how it ended: ``ok`` with the outcome summarized,
``not-applicable`` when the settings are refused by the simulation's own
validation (a robust rule under secure aggregation; the reason is kept), or
``failed`` with the error's last line. An interrupt writes nothing, so the
trial runs again when the sweep resumes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lifecycle.errors import ConfigurationError
from simulations.experiments.records import make_record


def run_trial(trial: str, settings: Mapping[str, Any], extra: Mapping[str, Any],
              events: Path | None = None) -> dict[str, Any]:
    """Run the simulation ``settings`` describe and return the trial's record (never raises for the trial)."""
    from simulations.federation import SimulationConfig, run  # heavy: torch, Flower, Ray

    started = time.monotonic()
    values = {key.replace("-", "_"): value for key, value in {**settings, **extra}.items()}
    try:
        cfg = SimulationConfig(**values)
    except TypeError as exc:  # a field this fedguard (on this node) does not have
        return make_record(trial, settings, "failed", error=f"settings not understood: {exc}")
    try:
        cfg.validate()
    except ConfigurationError as exc:
        return make_record(trial, settings, "not-applicable", config=asdict(cfg), error=last_line(str(exc)),
                           seconds=time.monotonic() - started)
    try:
        outcome = run(cfg, _observer(events))
    except Exception as exc:  # noqa: BLE001 - any failure is the trial's result; the sweep goes on
        return make_record(trial, settings, "failed", config=asdict(cfg),
                           error=describe(exc), seconds=time.monotonic() - started)
    if cfg.canaries and isinstance(outcome.get("privacy_audit"), dict):  # the audited run: its MIA too
        from simulations.membership import membership_section

        mia = membership_section(Path(outcome["artifact"]), Path(outcome["run_dir"]) / "data")
        outcome["privacy_audit"].update(roc=mia.pop("roc"), **{f"mia_{k}": v for k, v in mia.items()})
    return make_record(trial, settings, "ok", config=asdict(cfg), outcome=outcome,
                       seconds=time.monotonic() - started)


def describe(exc: BaseException) -> str:
    """One line: the error and, when it wraps another (Flower's "Simulation Runtime crashed"), the root cause."""
    chain = [exc]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 10:
        chain.append(nxt)
    text = f"{type(exc).__name__}: {last_line(str(exc))}"
    if len(chain) > 1:
        text += f" (caused by {type(chain[-1]).__name__}: {last_line(str(chain[-1]))})"
    return text


def last_line(text: str) -> str:
    """The last non-empty line of an error message or log (``""`` when there is none)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _observer(events: Path | None) -> Any:
    """Append each progress event as a JSON line to ``events`` (the trial's own log of rounds)."""

    def observe(event: str, payload: Mapping[str, Any]) -> None:
        if events is not None:
            with events.open("a", encoding="utf-8") as stream:
                stream.write(json.dumps({"event": event, **payload}, default=str) + "\n")

    return observe


def main(argv: Sequence[str] | None = None) -> int:
    """Read the spec, run the trial, write its record; exit 0 whenever a record was written."""
    spec_path, record_path = (Path(a) for a in (argv if argv is not None else sys.argv[1:]))
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    events = record_path.with_name("events.jsonl")
    record = run_trial(spec["id"], spec["settings"], spec.get("extra", {}), events=events)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    partial = record_path.with_suffix(".partial")
    partial.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    partial.replace(record_path)
    return 0


def _exit(code: int) -> None:
    """Leave now, the record written: a crashed Flower runtime can leave non-daemon engine threads behind.

    Flower's ServerApp thread outlives a simulation whose Ray failed to
    start, and the interpreter would wait for it forever; the record is all
    this process owes, so Ray is stopped and the process exits hard.
    """
    if "ray" in sys.modules:
        import ray

        ray.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
