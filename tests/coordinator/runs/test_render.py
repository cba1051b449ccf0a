"""Every progress event in words: sites by name with their reasons, no dicts, no reprs, no empty lines."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rich.console import Console

from coordinator.runs import render
from coordinator.runs.job import Job
from coordinator.runs.progress import ProgressLog
from lifecycle.errors import SitesUnavailableError, TrainingError
from lifecycle.home import Home

EVENTS = [
    {"event": "waiting", "identified": 2, "needed": 3, "missing": {"kings": "not connected"}},
    {"event": "stage", "stage": "identified", "sites": 2, "needed": 2, "names": ["guys", "st-marys"],
     "refused": {"kings": "the site's data does not match its schema: age (type)"}, "resumed_after": 0},
    {"event": "round", "round": 1, "rounds": 3, "sites": 2, "failed": 1, "rejected": 0, "accuracy": 0.91,
     "loss": 0.3, "epsilon_max": 1.5, "site_epsilon": None, "dropped": ["kings"],
     "reasons": {"kings": "the site refused the round: its local privacy budget would be exceeded"}},
    {"event": "stage", "stage": "watermark", "scheme": "trigger-set"},
    {"event": "stage", "stage": "publish"},
    {"event": "done", "model": "cardio", "version": 2, "accuracy": 0.93},
    {"event": "unavailable", "identified": 1, "needed": 3,
     "missing": {"guys": "schema lacks columns ['chol']", "kings": "not connected"}},
    {"event": "failed", "error": "SitesUnavailableError: …", "message": "the run needs 3 site(s) but 1 could",
     "exit_code": 9, "flower_run": 4},
]


def _plain(text: str) -> str:
    console = Console(record=True, width=300)
    console.print(text, highlight=False, soft_wrap=True)
    return console.export_text()


def test_every_event_renders_as_words_naming_sites_and_their_reasons() -> None:
    lines = [render.line(event) for event in EVENTS]
    assert all(line for line in lines)
    text = "\n".join(_plain(line or "") for line in lines)
    assert "waiting for sites: 2 of 3, missing kings — not connected" in text
    assert "sites identified: 2 of 2 needed: guys, st-marys" in text
    assert "kings: the site's data does not match its schema: age (type)" in text
    assert "dropped kings" in text and "kings: the site refused the round" in text
    assert "embedding and verifying the watermark" in text and "signing and registering the model" in text
    assert "guys: schema lacks columns ['chol']" in text and "run failed (exit 9): the run needs 3" in text
    assert not re.search(r"[{}]|node \d|'stage'|Error:", text)  # no dict, no node id, no repr


def test_nothing_is_printed_for_a_watermark_stage_without_a_watermark() -> None:
    assert render.line({"event": "stage", "stage": "watermark", "scheme": "none"}) is None


def test_a_failure_ends_the_follower_with_its_exit_code() -> None:
    unavailable = render.failure("r1", EVENTS[-1])
    assert isinstance(unavailable, SitesUnavailableError) and unavailable.exit_code == 9
    assert "run r1 failed: the run needs 3" in str(unavailable)
    other = render.failure("r1", {"event": "failed", "error": "TrainingError: round 2 aggregated nothing"})
    assert type(other) is TrainingError and other.exit_code == 6


def test_status_names_each_site_that_did_not_take_part(tmp_path: Path) -> None:
    from coordinator.run_cli import _status

    directory = tmp_path / "runs" / "r3"
    Job.from_mapping({"num-server-rounds": 3}).with_run_id("r3").dump(directory / "job.toml")
    log = ProgressLog(directory / "progress.jsonl")
    for event in EVENTS[:3]:
        log(str(event["event"]), {k: v for k, v in event.items() if k != "event"})
    info = _status(Home(tmp_path), "r3")
    assert info["site_reasons"] == {"kings": "the site refused the round: its local privacy budget would be exceeded"}
    line = render.status_line(info)
    assert "site_reasons: kings: the site refused the round" in line and "{" not in line
    json.dumps(info)  # --json stays JSON
