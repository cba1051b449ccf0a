"""Raw records never leave the site: every message the real ClientApp sends is inspected.

Three deployed-style sites (node config ``data-path``, ``schema-path``,
``site-name``, ``audit-path``, ``ledger-path``) answer the real coordinator
(``run_federation``: identity query, DP-SGD rounds, SecAgg+ on and off) over
an in-process grid (DP-SGD off to keep the test short: it changes the
update's values, not which records leave). Every reply is searched for the sites' raw rows, feature
columns and label columns (exact bytes as float32/float64/CSV text, and
float-equal subsequences of every array and numeric value), its record names
are checked against what each message kind may carry, and each site's audit
log must have one line per reply with the same size and SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from numpy.lib.stride_tricks import sliding_window_view

from client.app import make_client_app
from client.audit import verify_log, wire_bytes
from coordinator.app import run_federation
from coordinator.config import CoordinatorConfig
from federation.protocol import REFERENCE_MESSAGE_TYPE as REFERENCE
from federation.tabular import write_csv
from lifecycle.architecture import DataSchema
from privacy.secagg.messages import RECORD_KEY as SECAGG
from simulations.datasets import load_dataset
from tests.privacy.secagg.harness import LocalGrid

SITES = 3
SITE_RECORD_KEYS = {"name", "manifest", "secure-rng", "num-examples", "epsilon", "delta", "noise-multiplier",
                    "sample-rate", "steps", "steps-per-round", "max-grad-norm", "accountant", "ledger-epsilon-record",
                    "device",  # where the site trained: "cpu" or the GPU's name (client.device.describe)
                    "require-protection", "epsilon-cap"}  # the site's policy (identity reply), never data


@dataclass(frozen=True)
class Site:
    name: str
    features: np.ndarray  # float64, as parsed from the file
    labels: np.ndarray
    lines: tuple[str, ...]  # the CSV's data lines, verbatim
    audit: Path


def _write_federation(root: Path) -> tuple[Path, dict[str, Site], dict[str, dict[str, str]]]:
    data = load_dataset("breast-cancer")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.labels))[: 60 * SITES + 80]
    x, y = data.features[order], data.labels[order]
    coordinator = root / "coordinator"
    write_csv(coordinator / "test.csv", x[-80:], y[-80:], list(data.feature_names), "label")
    (coordinator / "schema.json").write_text(json.dumps(DataSchema(data.feature_names, "label", data.label_names)
                                                        .to_dict()))
    schema = root / "schema.toml"
    schema.write_text('label = "label"\nlabel-values = [0, 1]\n\n[columns]\n' + "".join(
        f'"{name}" = {{ type = "float", min = 0 }}\n' for name in data.feature_names))
    sites, configs = {}, {}
    for i in range(SITES):
        name = f"hospital-{i}"
        path = root / name / "patients.csv"
        write_csv(path, x[60 * i: 60 * (i + 1)], y[60 * i: 60 * (i + 1)], list(data.feature_names), "label")
        lines = tuple(path.read_text().splitlines()[1:])
        parsed = np.array([[float(v) for v in line.split(",")] for line in lines])
        audit = root / name / "audit.jsonl"
        sites[name] = Site(name, parsed[:, :-1], parsed[:, -1], lines, audit)
        configs[name] = {"data-path": str(path), "schema-path": str(schema), "site-name": name,
                         "audit-path": str(audit), "ledger-path": str(root / name / "ledger.db"),
                         "epsilon-cap": 50.0}
    return coordinator, sites, configs


def _numeric(message: Message) -> Iterator[np.ndarray]:
    """Every array and every numeric config/metric value of a reply, as flat float64 vectors."""
    content = message.content
    for record in content.array_records.values():
        for array in record.values():
            yield array.numpy().astype(np.float64).ravel()
    for cfg_record in [*content.config_records.values(), *content.metric_records.values()]:
        for value in cfg_record.values():
            items = value if isinstance(value, list) else [value]
            numbers = [float(v) for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if numbers:
                yield np.array(numbers)


def _contains(vector: np.ndarray, needles: np.ndarray) -> bool:
    """Whether any row of ``needles`` appears in ``vector`` as a float-equal contiguous subsequence."""
    width = needles.shape[1]
    if vector.size < width:
        return False
    windows = sliding_window_view(vector, width)
    for start in range(0, len(windows), 256):
        block = windows[start:start + 256]
        if np.isclose(block[:, None, :], needles[None, :, :], rtol=1e-6, atol=0.0).all(axis=2).any():
            return True
    return False


def leaks(message: Message, site: Site) -> list[str]:
    """What of ``site``'s raw data ``message`` carries (empty: nothing)."""
    found = []
    blob = wire_bytes(message)
    for i, row in enumerate(site.features):
        if row.astype(np.float32).tobytes() in blob or row.tobytes() in blob or site.lines[i].encode() in blob:
            found.append(f"bytes of row {i + 1}")
    for j in range(site.features.shape[1]):
        if site.features[:, j].astype(np.float32).tobytes() in blob:
            found.append(f"bytes of column {j}")
    if site.labels.astype(np.int64).tobytes() in blob or site.labels.astype(np.float32).tobytes() in blob:
        found.append("bytes of the label column")
    columns = np.vstack([site.features.T, site.labels[None, :]])
    for vector in _numeric(message):
        if _contains(vector, site.features) or _contains(vector, np.hstack([site.features, site.labels[:, None]])):
            found.append("a raw row among its values")
        if _contains(vector, columns):
            found.append("a raw column among its values")
    return found


def _expected_records(request: Message, reply: Message) -> set[str]:
    kind = request.metadata.message_type
    if kind == REFERENCE:  # the offer's answer, then SecAgg+ stages of the noised reference sum
        return {"reference"} if SECAGG not in request.content else {SECAGG, *reply.content.array_records.keys()}
    if kind == MessageType.QUERY:
        return {"site"}
    if kind == MessageType.EVALUATE:
        return {"metrics"}
    if SECAGG not in request.content:
        return {"arrays", "metrics", "site"}
    return {"arrays", "metrics", "site", SECAGG} if "arrays" in reply.content else {SECAGG}


class RecordingGrid(LocalGrid):
    """LocalGrid that also keeps each (request, reply) pair."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.pairs: list[tuple[Message, Message]] = []

    def send_and_receive(self, messages: object, *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)  # type: ignore[call-overload]
        replies = super().send_and_receive(messages, timeout=timeout)
        assert len(replies) == len(messages)  # nobody is silenced here: replies come in order
        self.pairs += list(zip(messages, replies, strict=True))
        return replies


@pytest.mark.parametrize("secure", ["secagg+", "none"])
def test_every_outgoing_message_is_free_of_raw_records(fedguard_home: Path, tmp_path: Path, secure: str) -> None:
    coordinator, sites, configs = _write_federation(tmp_path)
    grid = RecordingGrid(make_client_app(require_protection=secure != "none"), SITES)
    nodes = grid.get_node_ids()
    site_of = dict(zip(nodes, sites, strict=True))
    for node, name in site_of.items():
        grid.contexts[node] = Context(run_id=1, node_id=node, node_config=configs[name], state=RecordDict(),
                                      run_config={})
    cfg = CoordinatorConfig.from_mapping({
        "num-server-rounds": 2, "num-sites": SITES, "local-epochs": 1, "data-dir": str(coordinator),
        "watermark": "none", "secure-aggregation": secure, "round-timeout": 30.0, "model-name": "leak-test",
        "dp-epsilon": 0.0,  # σ calibration (3 sites × ~10 s on 2 cores) adds nothing to what is inspected here
    })
    outcome = run_federation(grid, cfg, lambda event, payload: None)
    assert outcome["model"] == "leak-test" and len(outcome["history"]) == 2
    assert set(outcome["epsilon"]) == set(sites)  # the sites' own names came through, via the node config
    # one federated evaluation too, so every message kind is covered
    first = next(request for request, _ in grid.pairs if "arrays" in request.content)
    config = ConfigRecord({**dict(first.content["config"]), "server-round": 3})
    grid.send_and_receive([Message(RecordDict({"arrays": first.content["arrays"], "config": config}),
                                   dst_node_id=node, message_type=MessageType.EVALUATE) for node in nodes])

    kinds = {pair[0].metadata.message_type for pair in grid.pairs}
    reference = {REFERENCE} if secure == "secagg+" else set()  # no reference without secure aggregation
    assert kinds == {MessageType.QUERY, MessageType.TRAIN, MessageType.EVALUATE, *reference}
    assert len(grid.pairs) == (SITES * (1 + (1 + 4 if reference else 0) + 2 * (4 if secure == "secagg+" else 1) + 1))
    for request, reply in grid.pairs:
        site = sites[site_of[reply.metadata.src_node_id]]
        assert not reply.has_error(), reply.error.reason
        assert leaks(reply, site) == [], (request.metadata.message_type, site.name)
        assert set(reply.content.keys()) == _expected_records(request, reply)
        if "site" in reply.content:
            assert set(reply.content["site"].keys()) <= SITE_RECORD_KEYS
        if "metrics" in reply.content:
            assert isinstance(reply.content["metrics"], MetricRecord)
    for name, site in sites.items():
        replies = [reply for _, reply in grid.pairs if site_of[reply.metadata.src_node_id] == name]
        lines = [json.loads(line) for line in site.audit.read_text().splitlines()]
        assert verify_log(site.audit) == len(replies) == len(lines)
        for line, reply in zip(lines, replies, strict=True):
            blob = wire_bytes(reply)
            assert (line["size"], line["sha256"]) == (len(blob), hashlib.sha256(blob).hexdigest())
            assert line["records"] == sorted(reply.content.keys())


def test_the_inspection_catches_a_leak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above can fail: a reply carrying a row, a column or a CSV line is flagged."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value, raising=False)
    _, sites, _ = _write_federation(tmp_path)
    site = sites["hospital-0"]
    padded = np.concatenate([[0.5, 0.25], site.features[7], [9.0]]).astype(np.float32)
    carriers = [
        RecordDict({"arrays": ArrayRecord({"w": _array(padded)})}),
        RecordDict({"metrics": MetricRecord({"x": site.features[:, 3].tolist()})}),
        RecordDict({"site": ConfigRecord({"note": site.lines[4]})}),
        RecordDict({"arrays": ArrayRecord({"y": _array(site.labels.astype(np.int64))})}),
    ]
    for content in carriers:
        assert leaks(Message(content, dst_node_id=1, message_type=MessageType.TRAIN), site), content.keys()


def _array(values: np.ndarray) -> object:
    from flwr.app import Array

    return Array(np.ascontiguousarray(values))
