"""The model registry (SQLModel on SQLite by default, PostgreSQL by URL)."""

from lifecycle.registry.store import Registry, SiteRecord, VersionRecord, parse_ref, validate_model_name

__all__ = ["Registry", "SiteRecord", "VersionRecord", "parse_ref", "validate_model_name"]
