"""The model registry (SQLModel on SQLite by default, PostgreSQL by URL)."""

from lifecycle.registry.deployments import DeploymentRecord, DeploymentState, DeploymentStore
from lifecycle.registry.lineage import LineageMismatch, check_lineage
from lifecycle.registry.store import Registry, SiteRecord, VersionRecord, parse_ref, validate_model_name

__all__ = ["DeploymentRecord", "DeploymentState", "DeploymentStore", "LineageMismatch", "Registry", "SiteRecord",
           "VersionRecord", "check_lineage", "parse_ref", "validate_model_name"]
