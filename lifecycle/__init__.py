"""Shared machinery of fedguard: settings, errors, artifacts, signing, registry, audit.

Every other package may import this one; it imports nothing of ours.
"""

import logging

logger = logging.getLogger("fedguard.lifecycle")
