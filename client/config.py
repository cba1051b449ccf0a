"""Who the site is and where its data lives (node config); the round's instructions it receives.

The instructions themselves are :class:`federation.protocol.TrainConfig`
(re-exported here): the typed contract both sides speak, parsed in one place
so a missing or mistyped key fails at the site with a message naming it.
The name a site reports (:func:`site_name`) is only a claim: the coordinator
binds every reply to the site's enrolled identity (``coordinator.identity``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context

from federation.protocol import TrainConfig
from lifecycle.errors import ConfigurationError
from lifecycle.home import SiteHome
from lifecycle.settings import get_settings

__all__ = ["NODE_CONFIG_KEYS", "SiteIdentity", "TrainConfig", "site_name"]


NODE_CONFIG_KEYS = ("data-path", "schema-path", "site-name", "audit-path", "ledger-path", "epsilon-cap", "device",
                    "consent-path")
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
    consent_path: Path | None = None
    """The site's consent list (``client.consent``): node config ``consent-path``, else ``SiteHome.consent``."""

    @classmethod
    def from_context(cls, context: Context, cfg: TrainConfig) -> SiteIdentity:
        node = context.node_config
        schema = Path(str(node["schema-path"])) if node.get("schema-path") else None
        name = site_name(node)
        consent = (Path(str(node["consent-path"])) if node.get("consent-path")
                   else SiteHome.under(get_settings().home, name).consent)
        if "data-path" in node:
            return cls(name, Path(str(node["data-path"])), schema, consent)
        if "partition-id" in node and cfg.data_dir:
            pid = int(node["partition-id"])
            return cls(name, Path(cfg.data_dir) / f"site-{pid}.csv", schema, consent)
        raise ConfigurationError(
            "this site has no data: start the SuperNode with --node-config \"data-path='<your.csv>' "
            "schema-path='<schema.toml>'\""
        )
