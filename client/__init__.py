"""The site agent: local data, validation, DP-SGD training, Flower ClientApp."""

import logging

logger = logging.getLogger("fedguard.client")
