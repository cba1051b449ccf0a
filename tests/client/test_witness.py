"""The site as a witness of the coordinator's audit trail: the checkpoint travels in the train messages."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from flwr.app import ConfigRecord

from client.audit import SiteAuditLog, make_audit_mod
from coordinator.app import witness_checkpoint
from federation.protocol import AUDIT_CHECKPOINT, WitnessCheckpoint
from lifecycle.audit.checkpoints import Signed
from lifecycle.audit.witness import WITNESSED, WitnessLog, witness_path
from lifecycle.registry import Registry
from tests.client.test_audit import _reply, task_identity  # noqa: F401 - the fixture Flower's messages need
from tests.lifecycle.test_audit_witness import _events, _key
from tests.privacy.ledger.flwr_helpers import context, train_message


def test_the_coordinator_sends_its_newest_checkpoint_and_a_site_keeps_it(registry: Registry, tmp_path: Path) -> None:
    _events(registry, 5)
    config = ConfigRecord({"server-round": 1})
    witness_checkpoint(registry, config, sign=True)  # the run's start signs the head: event 5
    notice = WitnessCheckpoint.from_record(config)
    assert notice is not None and Signed.parse(notice.checkpoint, "sent").checkpoint.events == 5
    assert notice.public_key == _key(registry)
    log = tmp_path / "site" / "audit.jsonl"
    mod = make_audit_mod(lambda ctx: SiteAuditLog(log))
    for server_round in (1, 2):
        mod(train_message({"config": config}, server_round=server_round), context({"site-name": "st-marys"}),
            lambda m, c: _reply(m))
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines[0]["witness"] == {"status": WITNESSED, "events": 5, "event_id": 5,
                                   "hash": lines[0]["witness"]["hash"]}
    assert "witness" not in lines[1]  # the same checkpoint again: nothing new to note
    assert [e.signed.checkpoint.events for e in WitnessLog(witness_path(log)).read()] == [5]


def test_a_damaged_witness_line_is_an_alarm_and_later_checkpoints_are_still_kept(
    registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _events(registry, 3)
    log = tmp_path / "site" / "audit.jsonl"
    witness_path(log).parent.mkdir(parents=True)
    witness_path(log).write_text("{damaged\n")
    config = ConfigRecord({"server-round": 1})
    witness_checkpoint(registry, config, sign=True)
    mod = make_audit_mod(lambda ctx: SiteAuditLog(log))
    with caplog.at_level(logging.ERROR, logger="fedguard"):
        mod(train_message({"config": config}), context({"site-name": "st-marys"}), lambda m, c: _reply(m))
    line = json.loads(log.read_text())
    assert line["witness"]["status"] == WITNESSED and line["witness"]["damaged"] == [1]
    assert "1 damaged line(s)" in caplog.text and "witnessing goes on" in caplog.text
    assert [e.signed.checkpoint.events for e in WitnessLog(witness_path(log)).witnessed()] == [3]


def test_a_malformed_checkpoint_is_noted_and_never_stops_the_reply(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    mod = make_audit_mod(lambda ctx: SiteAuditLog(log))
    config = ConfigRecord({"server-round": 1, AUDIT_CHECKPOINT: "{}"})  # without its AUDIT_KEY
    reply = mod(train_message({"config": config}), context({"site-name": "st-marys"}), lambda m, c: _reply(m))
    assert not reply.has_error()
    line = json.loads(log.read_text())
    assert line["witness"]["status"] == "malformed" and "audit-key" in line["witness"]["detail"]
    assert not witness_path(log).exists()
