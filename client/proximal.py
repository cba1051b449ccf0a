"""FedProx at a site: the proximal term μ/2·‖w − w_global‖² pulls local training towards the global model.

The term's gradient, μ·(w − w_global), is added to every parameter's
gradient just before the local optimiser's update (a step pre-hook on the
plain ``torch.optim`` optimiser), which is exactly the gradient of
``loss + μ/2·‖w − w_global‖²``: with or without DP-SGD the update is the
same function of the (possibly privatised) data gradient.

Why not add the term to the loss under DP-SGD: Opacus clips and noises the
*per-example* gradients of the loss. The proximal gradient depends on no
record (only on the weights and the global model every site received), so
it must not be clipped with the records' gradients (clipping would shrink
it, and it would eat into each example's clipping budget C). Added after
Opacus' clip-and-noise (its ``DPOptimizer.step`` calls the original
optimiser's ``step`` last, and the hook runs there), it is post-processing
of the privatised gradient: σ, C, the sample rate, the step count and so the
accountant's ε are exactly those of the same run without FedProx
(Dwork & Roth 2014, Prop. 2.1); the site's ledger charges the same.

Notes
-----
Li et al. (2020), "Federated Optimization in Heterogeneous Networks"
(FedProx); Flower's ``FedProx`` sends μ under the same ``proximal-mu`` key.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from federation.protocol import PROXIMAL_MU, ProtocolError


@contextmanager
def proximal_term(model: nn.Module, optimizer: torch.optim.Optimizer, mu: float) -> Iterator[None]:
    """While inside, every ``optimizer.step`` adds μ·(w − w_global) to each trainable parameter's gradient.

    ``w_global`` is ``model``'s weights on entry (the global model the round
    started from). ``optimizer`` is the plain torch optimiser that applies
    the update (under DP-SGD, the one Opacus wraps). μ = 0 does nothing.

    Raises
    ------
    ProtocolError
        ``mu`` is negative or not finite (the coordinator validates it; a site checks what arrives).
    """
    if not math.isfinite(mu) or mu < 0:
        raise ProtocolError(f"the round configuration's '{PROXIMAL_MU}' is {mu!r}, not a finite μ ≥ 0; "
                            "coordinator and site versions differ or the message was altered")
    if mu == 0:
        yield
        return
    anchors = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]

    def add_proximal_gradient(_optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        with torch.no_grad():
            for param, anchor in anchors:
                if param.grad is not None:
                    param.grad.add_(param - anchor, alpha=mu)

    handle = optimizer.register_step_pre_hook(add_proximal_gradient)
    try:
        yield
    finally:
        handle.remove()
