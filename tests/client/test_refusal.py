"""A site that refuses or fails answers with a reason code and one line that carries no data (client.refusal)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Error, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from client.app import make_client_app
from client.audit import read_log
from client.refusal import refusal_of, translate
from federation.protocol import IdentityReply, ProtocolError, SiteRefusal
from privacy.ledger.guard import BUDGET_VETO
from tests.privacy.secagg.harness import LocalGrid

SCHEMA = ('label = "y"\nlabel-values = ["no", "yes"]\n\n[columns]\n'
          'a = { type = "float", min = 0 }\nb = { type = "int" }\n')
ROWS = "0.5,1,yes\n1.5,2,no\n"


def _config(**extra: object) -> ConfigRecord:
    return ConfigRecord({
        "server-round": 0, "total-rounds": 1, "local-epochs": 1, "batch-size": 4, "lr": 0.1, "dp-epsilon": 0.0,
        "dp-delta": 1e-5, "max-grad-norm": 1.0, "features": ["b", "a"], "target": "y", "num-classes": 2,
        "labels": ["no", "yes"], "hidden": [4], "seed": 1, **extra,
    })


def _site(tmp_path: Path, *, mods: tuple[object, ...] = (), **node: object) -> tuple[LocalGrid, int]:
    (tmp_path / "schema.toml").write_text(SCHEMA)
    (tmp_path / "site.csv").write_text("a,b,y\n" + ROWS)
    grid = LocalGrid(make_client_app(mods=list(mods)), 1)  # type: ignore[arg-type]
    number = grid.get_node_ids()[0]
    grid.contexts[number] = Context(run_id=1, node_id=number, state=RecordDict(), run_config={}, node_config={
        "data-path": str(tmp_path / "site.csv"), "schema-path": str(tmp_path / "schema.toml"),
        "site-name": "kings", "audit-path": str(tmp_path / "audit.jsonl"), **node})  # type: ignore[dict-item]
    return grid, number


def _send(grid: LocalGrid, node: int, kind: str = MessageType.QUERY, **config: object) -> Message:
    (reply,) = grid.send_and_receive([Message(RecordDict({"config": _config(**config)}), dst_node_id=node,
                                              message_type=kind)])
    return reply


def test_a_schema_that_does_not_fit_the_model_is_refused_naming_the_columns(tmp_path: Path) -> None:
    grid, node = _site(tmp_path)
    reply = _send(grid, node, features=["b", "a", "cholesterol"])
    refusal = SiteRefusal.of(reply)
    assert refusal is not None and refusal.code == "contract-mismatch"
    assert "lacks ['cholesterol']" in refusal.message and "0.5" not in refusal.message
    (line,) = read_log(tmp_path / "audit.jsonl")
    assert line["error"] is True  # what left the site is the refusal, and it is audited


def test_a_clear_update_request_is_refused_with_the_setting_to_change(tmp_path: Path) -> None:
    grid, node = _site(tmp_path)
    refusal = SiteRefusal.of(_send(grid, node, MessageType.TRAIN))
    assert refusal is not None and refusal.code == "unprotected-refused"
    assert "secure-aggregation" in refusal.message


def test_any_other_failure_sends_its_type_only_and_the_site_log_keeps_the_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        raise ValueError("cell 'age' holds 42.7")

    grid, node = _site(tmp_path, mods=(boom,))
    with caplog.at_level(logging.ERROR, logger="fedguard.client"):
        refusal = SiteRefusal.of(_send(grid, node))
    assert refusal is not None and refusal.code == "crash" and "ValueError" in refusal.message
    assert "42.7" not in refusal.message and "42.7" in caplog.text


def test_a_mistyped_instruction_never_echoes_its_value(tmp_path: Path) -> None:
    grid, node = _site(tmp_path)
    refusal = SiteRefusal.of(_send(grid, node, lr="secret-value"))
    assert refusal is not None and refusal.code == "protocol" and "secret-value" not in refusal.message
    assert refusal_of(ProtocolError("the lr is 'secret-value'")).message.count("secret") == 0


def test_an_inner_veto_is_translated_by_its_public_reason() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    msg = Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)
    veto = translate(msg, Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=BUDGET_VETO), reply_to=msg))
    assert SiteRefusal.of(veto) == SiteRefusal("budget-veto", BUDGET_VETO)
    other = translate(msg, Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason="σ=0.3 for 42 rows"),
                                   reply_to=msg))
    refusal = SiteRefusal.of(other)
    assert refusal is not None and refusal.code == "crash" and "42" not in refusal.message


def test_the_identity_reply_carries_the_sites_policy(tmp_path: Path) -> None:
    grid, node = _site(tmp_path, **{"epsilon-cap": 2.5})
    site = IdentityReply.from_record(_send(grid, node).content["site"])  # type: ignore[arg-type]
    assert (site.name, site.require_protection, site.epsilon_cap) == ("kings", True, 2.5)
    grid, node = _site(tmp_path, **{"require-secure-aggregation": False})
    site = IdentityReply.from_record(_send(grid, node).content["site"])  # type: ignore[arg-type]
    assert (site.require_protection, site.epsilon_cap) == (False, None)
