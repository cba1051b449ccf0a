"""The defaults of what a run asks of its sites, in one place (light: the CLI imports it at start-up).

:mod:`federation.protocol` re-exports them for the messages; the coordinator's
run config (``coordinator.config.DEFAULTS``) and the simulation's flags
(``simulations.federation.SimulationConfig``, ``fedguard simulate``) start
from them, so a default is never written twice.
"""

from __future__ import annotations

DEFAULT_DP_EPSILON = 3.0
"""Record-level ε per site for the whole run (0 disables DP-SGD)."""
DEFAULT_DP_DELTA = 1e-5
DEFAULT_MAX_GRAD_NORM = 1.0
"""DP-SGD's per-example clipping norm."""
DEFAULT_LOCAL_EPOCHS = 2
DEFAULT_BATCH_SIZE = 32
DEFAULT_LR = 0.1
DEFAULT_SEED = 42
DEFAULT_HIDDEN = "32"
"""Hidden layer sizes, comma-separated."""
DEFAULT_DEVICE = "cpu"
"""Where sites train unless their node config says otherwise (``client.device``)."""
DEFAULT_CLIP_NORM = 10.0
"""L2 bound on each site's update (checked in the clear, enforced by the secure mods)."""
