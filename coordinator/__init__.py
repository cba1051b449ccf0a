"""The coordinator: Flower ServerApp, rounds, strategy, evaluation, publication."""

import logging

logger = logging.getLogger("fedguard.coordinator")
