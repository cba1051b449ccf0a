"""Virtual federations on Ray: the same ClientApp/ServerApp with many simulated sites."""

import logging

logger = logging.getLogger("fedguard.simulations")
