"""The deployed site's node config: data, schema, name, ledger and cap; a bad file fails the first message."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from client.app import make_client_app
from client.audit import read_log
from client.config import SiteIdentity, TrainConfig
from federation.protocol import SiteRefusal
from privacy.ledger.guard import default_site_ledger
from tests.privacy.secagg.harness import LocalGrid

SCHEMA = ('label = "y"\nlabel-values = ["no", "yes"]\n\n[columns]\n'
          'a = { type = "float", min = 0 }\nb = { type = "int" }\n')


def _config(**extra: object) -> ConfigRecord:
    return ConfigRecord({
        "server-round": 0, "total-rounds": 1, "local-epochs": 1, "batch-size": 4, "lr": 0.1, "dp-epsilon": 0.0,
        "dp-delta": 1e-5, "max-grad-norm": 1.0, "features": ["b", "a"], "target": "y", "num-classes": 2,
        "labels": ["no", "yes"], "hidden": [4], "seed": 1, **extra,
    })


def _site(tmp_path: Path, rows: str) -> tuple[LocalGrid, int]:
    (tmp_path / "schema.toml").write_text(SCHEMA)
    (tmp_path / "site.csv").write_text("a,b,y\n" + rows)
    grid = LocalGrid(make_client_app(), 1)
    node = grid.get_node_ids()[0]
    grid.contexts[node] = Context(run_id=1, node_id=node, state=RecordDict(), run_config={}, node_config={
        "data-path": str(tmp_path / "site.csv"), "schema-path": str(tmp_path / "schema.toml"),
        "site-name": "st-marys", "audit-path": str(tmp_path / "audit.jsonl")})
    return grid, node


def _query(grid: LocalGrid, node: int) -> Message:
    (reply,) = grid.send_and_receive([Message(RecordDict({"config": _config()}), dst_node_id=node,
                                              message_type=MessageType.QUERY)])
    return reply


def test_the_identity_query_reads_the_node_config(tmp_path: Path) -> None:
    grid, node = _site(tmp_path, "0.5,1,yes\n1.5,2,no\n")
    reply = _query(grid, node)
    assert not reply.has_error()
    site = reply.content["site"]
    assert site["name"] == "st-marys" and site["num-examples"] == 2 and len(str(site["manifest"])) == 64
    assert [line["kind"] for line in read_log(tmp_path / "audit.jsonl")] == ["query"]


def test_a_bad_file_is_refused_by_column_and_kind_with_details_in_the_site_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    grid, node = _site(tmp_path, "0.5,1,yes\n-2,x,maybe\n,3,no\n")
    with caplog.at_level(logging.ERROR, logger="fedguard.client"):
        reply = _query(grid, node)
    refusal = SiteRefusal.of(reply)  # the coordinator learns the columns and kinds of problem, nothing more
    assert refusal is not None and refusal.code == "data-invalid"
    assert "a (below-min), a (missing), b (type), y (unknown-label)" in refusal.message
    for secret in ("-2", "maybe", "rows 2", "row(s)"):
        assert secret not in refusal.message
    log = caplog.text
    assert "4 problem(s), 2 of 3 rows affected" in log
    for expected in ("column 'a': 1 row(s) below min 0 (rows 2)", "column 'b': 1 row(s) not an integer (rows 2)",
                     "column 'a': 1 row(s) missing a value", "column 'y': 1 row(s) with a label not among"):
        assert expected in log
    (line,) = read_log(tmp_path / "audit.jsonl")
    assert line["error"] is True  # the refusal is a sent message too, and audited


def test_ledger_path_and_epsilon_cap_come_from_the_node_config(tmp_path: Path) -> None:
    context = Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                      node_config={"ledger-path": str(tmp_path / "ledger.db"), "epsilon-cap": 2.5})
    ledger = default_site_ledger(context, "st-marys")
    assert (tmp_path / "ledger.db").is_file()
    assert {(c.site, c.epsilon) for c in ledger.caps()} >= {("st-marys", 2.5)}


def test_simulation_fallback_uses_the_partition_file(tmp_path: Path) -> None:
    cfg = TrainConfig.from_record(_config(**{"data-dir": str(tmp_path)}))
    context = Context(run_id=1, node_id=9, state=RecordDict(), run_config={}, node_config={"partition-id": 3})
    site = SiteIdentity.from_context(context, cfg)
    assert (site.name, site.data_path, site.schema_path) == ("site-3", tmp_path / "site-3.csv", None)
    assert cfg.labels == ("no", "yes")


def test_a_clear_update_is_clipped_to_the_coordinators_bound(tmp_path: Path) -> None:
    import numpy as np
    from flwr.app import Array, ArrayRecord, MetricRecord

    from client.protection import make_protection_mod

    grid = LocalGrid(make_client_app(), 1)  # for the task identity and a node id
    node = grid.get_node_ids()[0]
    start = ArrayRecord({"w": Array(np.zeros(4, dtype=np.float32)), "b": Array(np.ones(2, dtype=np.float32))})
    msg = Message(RecordDict({"arrays": start, "config": _config(**{"clip-norm": 1.0})}), dst_node_id=node,
                  message_type=MessageType.TRAIN)

    def app(m: Message, c: Context) -> Message:
        moved = {"w": Array(np.full(4, 3.0, dtype=np.float32)), "b": Array(np.ones(2, dtype=np.float32))}
        return Message(RecordDict({"arrays": ArrayRecord(moved), "metrics": MetricRecord({"num-examples": 2})}),
                       reply_to=m)

    reply = make_protection_mod(require_protection=False)(msg, grid.contexts[node], app)
    w = reply.content["arrays"]["w"].numpy()
    assert np.allclose(w, 0.5) and np.allclose(reply.content["arrays"]["b"].numpy(), 1.0)  # ‖Δ‖ = 1, same direction
    assert reply.content["metrics"]["num-examples"] == 2
