"""What the coordinator asks a site to do in one round, read from the message.

The coordinator sends a Flower ``ConfigRecord`` with hyphenated keys (Flower's
run-config convention). Parsing it into a frozen dataclass in one place means
a missing or mistyped key fails at the site with a clear message rather than
as a ``KeyError`` deep in training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context

from lifecycle.architecture import ModelSpec
from lifecycle.errors import ConfigurationError


@dataclass(frozen=True)
class TrainConfig:
    """One round's training instructions."""

    server_round: int
    total_rounds: int
    local_epochs: int
    batch_size: int
    lr: float
    dp_epsilon: float
    dp_delta: float
    max_grad_norm: float
    features: tuple[str, ...]
    target: str
    spec: ModelSpec
    seed: int
    data_dir: str = ""
    labels: tuple[str, ...] = ()
    device: str = "cpu"  # the run's ``site-device``; a site's node config ``device`` wins (client.device)

    @property
    def dp_enabled(self) -> bool:
        return self.dp_epsilon > 0

    @classmethod
    def from_record(cls, record: ConfigRecord) -> TrainConfig:
        def get(key: str) -> Any:
            if key not in record:
                raise ConfigurationError(f"round configuration lacks '{key}'; coordinator and site versions differ")
            return record[key]

        features = tuple(str(f) for f in get("features"))
        return cls(
            server_round=int(get("server-round")),
            total_rounds=int(get("total-rounds")),
            local_epochs=int(get("local-epochs")),
            batch_size=int(get("batch-size")),
            lr=float(get("lr")),
            dp_epsilon=float(get("dp-epsilon")),
            dp_delta=float(get("dp-delta")),
            max_grad_norm=float(get("max-grad-norm")),
            features=features,
            target=str(get("target")),
            spec=ModelSpec(
                in_features=len(features),
                num_classes=int(get("num-classes")),
                hidden=tuple(int(h) for h in get("hidden")),
            ),
            seed=int(get("seed")),
            data_dir=str(record.get("data-dir", "")),
            labels=tuple(str(v) for v in record.get("labels", [])),  # type: ignore[union-attr]
            device=str(record.get("device", "cpu")),
        )


NODE_CONFIG_KEYS = ("data-path", "schema-path", "site-name", "audit-path", "ledger-path", "epsilon-cap", "device")
"""The SuperNode node-config keys a deployed site sets (docs/site-data.md)."""


def site_name(node_config: Mapping[str, Any], node_id: int = 0) -> str:
    """The site's name: ``site-name``, else the data file's stem, else ``site-<partition>`` (simulation)."""
    if "site-name" in node_config:
        return str(node_config["site-name"])
    if "data-path" in node_config:
        return Path(str(node_config["data-path"])).stem
    if "partition-id" in node_config:
        return f"site-{int(node_config['partition-id'])}"
    return f"node-{node_id}"


@dataclass(frozen=True)
class SiteIdentity:
    """Who this site is, where its data and schema live (from the SuperNode's node config)."""

    name: str
    data_path: Path
    schema_path: Path | None = None

    @classmethod
    def from_context(cls, context: Context, cfg: TrainConfig) -> SiteIdentity:
        node = context.node_config
        schema = Path(str(node["schema-path"])) if node.get("schema-path") else None
        if "data-path" in node:
            return cls(site_name(node), Path(str(node["data-path"])), schema)
        if "partition-id" in node and cfg.data_dir:
            pid = int(node["partition-id"])
            return cls(site_name(node), Path(cfg.data_dir) / f"site-{pid}.csv", schema)
        raise ConfigurationError(
            "this site has no data: start the SuperNode with --node-config \"data-path='<your.csv>' "
            "schema-path='<schema.toml>'\""
        )
