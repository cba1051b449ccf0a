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
DEFAULT_LOCAL_EPOCHS = 0
"""Local epochs per round; 0: chosen from the record-level ε by :func:`local_epochs_for`."""
NON_PRIVATE_LOCAL_EPOCHS = 2
"""Local epochs per round without record-level DP, and under DP from :data:`STRONG_PRIVACY_EPSILON` up."""
STRONG_PRIVACY_LOCAL_EPOCHS = 1
"""Local epochs per round under record-level DP-SGD with ε below :data:`STRONG_PRIVACY_EPSILON`."""
STRONG_PRIVACY_EPSILON = 3.0
"""Below this record-level ε the noise of each step, not the passes over the data, limits accuracy."""
DEFAULT_BATCH_SIZE = 32
DEFAULT_LR = 0.1
DEFAULT_SEED = 42
DEFAULT_HIDDEN = "32"
"""Hidden layer sizes, comma-separated."""
DEFAULT_DEVICE = "cpu"
"""Where sites train unless their node config says otherwise (``client.device``)."""
DEFAULT_CLIP_NORM = 10.0
"""L2 bound on each site's update (checked in the clear, enforced by the secure mods)."""


def local_epochs_for(local_epochs: int, dp_epsilon: float) -> int:
    """The local epochs a run asks for: ``local_epochs`` if set, else 1 under DP-SGD with ε < 3, else 2.

    At a fixed record-level ε, σ is calibrated for the run's planned number
    of noisy steps (rounds × local epochs × ⌈n / B⌉, :mod:`privacy.dp_sgd`);
    in the small-sampling-rate regime σ grows roughly as √steps (Abadi et
    al. 2016), so halving the local epochs cuts the noise of every step by
    about √2 while a small site's model is still learned in a few passes.
    The number of steps (epochs) is the first knob to turn at a given ε
    (Ponomareva et al. 2023, "How to DP-fy ML", §5.4; De et al. 2022,
    "Unlocking High-Accuracy Differentially Private Image Classification
    through Scale", tune epochs and batch size per ε). Measured on breast
    cancer, 5 sites, α=0.5, 5 rounds, SecAgg+ (docs/research.md, "Utility
    under strong privacy"): one epoch wins clearly at ε=1 and two are as
    good or better from ε=3 up and without DP, so the default ε=3 run is
    unchanged. A negative count is returned as it is, for the caller to refuse.
    """
    if local_epochs != 0:
        return local_epochs
    strong = 0 < dp_epsilon < STRONG_PRIVACY_EPSILON
    return STRONG_PRIVACY_LOCAL_EPOCHS if strong else NON_PRIVATE_LOCAL_EPOCHS
