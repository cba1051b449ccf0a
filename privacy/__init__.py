"""Differential privacy and secure aggregation used by sites and the coordinator."""

import logging

logger = logging.getLogger("fedguard.privacy")
