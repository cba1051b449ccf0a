"""Provisioning a federation: CA and certificates, site registry, bundles, CRL."""

from coordinator.provisioning.federation import FederationConfig, FederationLayout, init_federation
from coordinator.provisioning.sites import SiteInfo, SiteRegistry, validate_site_name

__all__ = ["FederationConfig", "FederationLayout", "SiteInfo", "SiteRegistry", "init_federation",
           "validate_site_name"]
