"""Record-level DP-SGD at a site: a thin wrapper over Opacus' ``PrivacyEngine``.

A site trains in several rounds, each in a fresh process, yet the guarantee is
for the whole run: σ is calibrated once for the *planned* total number of
steps (rounds × local epochs × steps per epoch), and the site keeps the count
of steps it actually took, so the ε it reports is the accountant's value for
its real history.

Per-example clipping runs on one of two paths with the same guarantee (same
σ, C, Poisson sampling, noise and accountant): ``"fused"``
(:mod:`privacy.fused_clipping`, for models built only from linear and
per-example parameter-free layers, such as the default MLP) or Opacus' own
per-sample gradients (``"opacus-ew"``, every other model). The path that ran
is :func:`clipping_path` of the optimizer, and is reported with ε.

What voids the guarantee: changing σ, the clipping norm or the batch size
between rounds of one run; training more steps than planned (the ε reported
then exceeds the target and is reported as such); disabling Poisson sampling.

Notes
-----
Abadi et al. (2016), "Deep Learning with Differential Privacy"; Opacus
(Yousefpour et al. 2021). Without ``torchcsprng`` the noise comes from torch's
default PRNG: fine for research, not a cryptographic guarantee.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from opacus import PrivacyEngine
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader

from lifecycle.custom_model import check_for_dp_sgd
from lifecycle.errors import ConfigurationError
from privacy import logger
from privacy.accountants import GaussianHistory, calibrate_noise
from privacy.fused_clipping import FusedClippingModule, FusedDPOptimizer, unsupported_layers


class PrivacyPlanError(ConfigurationError):
    """Training would not match the DP plan, so the reported ε would be wrong."""


@functools.cache
def secure_rng_available() -> bool:
    """Whether Opacus' cryptographically secure RNG (``torchcsprng``) can be used (asked once per process)."""
    return importlib.util.find_spec("torchcsprng") is not None


@dataclass(frozen=True)
class DPPlan:
    """The DP-SGD parameters a site fixes for a whole run."""

    target_epsilon: float
    delta: float
    max_grad_norm: float
    sample_rate: float
    planned_steps: int
    noise_multiplier: float
    accountant: str = "rdp"

    @classmethod
    def for_run(
        cls, *, target_epsilon: float, delta: float, max_grad_norm: float, num_examples: int,
        batch_size: int, epochs: int, accountant: str = "rdp",
    ) -> DPPlan:
        """Calibrate σ so that ``epochs`` epochs over ``num_examples`` spend ``target_epsilon``.

        The sample rate and steps are exactly Opacus' own for a loader of
        ``batch_size``: q = 1 / ceil(N / B) and ceil(N / B) Poisson steps per
        epoch, so the accountant's history matches what really ran.
        """
        steps_per_epoch = max(1, math.ceil(num_examples / max(1, batch_size)))
        sample_rate = 1.0 / steps_per_epoch
        planned = steps_per_epoch * epochs
        sigma = calibrate_noise(target_epsilon, delta, sample_rate, planned, accountant)
        return cls(target_epsilon, delta, max_grad_norm, sample_rate, planned, sigma, accountant)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, round(1 / self.sample_rate))

    def history(self, steps: int) -> GaussianHistory:
        return GaussianHistory(self.noise_multiplier, self.sample_rate, steps, self.delta, self.accountant)


#: ``make_private(clipping=...)`` values: fused when the model allows it, else Opacus; or force one.
CLIPPING_CHOICES = ("auto", "fused", "opacus")
FUSED, OPACUS_EW = "fused", "opacus-ew"


def clipping_path(optimizer: torch.optim.Optimizer) -> str:
    """Which per-example clipping path a DP optimizer from :func:`make_private` runs (reported in the BOM)."""
    return FUSED if isinstance(optimizer, FusedDPOptimizer) else OPACUS_EW


def make_private(
    model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader[Any], plan: DPPlan,
    *, secure_mode: bool = False, clipping: str = "auto", noise_generator: torch.Generator | None = None,
) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader[Any], PrivacyEngine]:
    """Wrap model, optimizer and loader for DP-SGD with the plan's σ and clipping norm.

    The returned module shares parameters with ``model``; read weights from
    ``model`` afterwards (the wrapper prefixes its state-dict keys).
    ``clipping="auto"`` takes the fused path when :func:`unsupported_layers`
    finds nothing and Opacus' ``ew`` per-sample gradients otherwise (logging
    why); ``"fused"`` refuses a model it cannot clip, ``"opacus"`` always
    uses Opacus. :func:`clipping_path` tells which ran. ``noise_generator``
    (tests only; refused with ``secure_mode``) seeds Opacus' noise.
    """
    if clipping not in CLIPPING_CHOICES:
        raise ConfigurationError(f"unknown clipping '{clipping}'; use one of {', '.join(CLIPPING_CHOICES)}")
    problems = unsupported_layers(model) if clipping != "opacus" else []
    if problems and clipping == "fused":
        raise PrivacyPlanError(
            f"fused clipping cannot clip {', '.join(problems)}; use clipping='auto' or 'opacus'"
        )
    check_for_dp_sgd(model, type(model).__name__)  # every Opacus objection at once, not the first one
    fused = clipping != "opacus" and not problems
    if problems:
        logger.info("DP-SGD: Opacus per-sample gradients (ew): fused clipping does not support %s",
                    ", ".join(problems))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=plan.accountant, secure_mode=secure_mode)
    private_model, private_opt, private_loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader,
        noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
        poisson_sampling=True, noise_generator=noise_generator,
        # fused: Opacus validates, samples, accounts and noises, and no per-sample gradients are hooked;
        # otherwise ew, the fastest Opacus mode here (benchmarks/dp_sgd.py); same guarantee either way
        grad_sample_mode="no_op" if fused else "ew",
    )
    if fused:
        private_model = FusedClippingModule(model)
        private_opt = _fused_optimizer(private_opt, private_model)
    if len(private_loader) != plan.steps_per_epoch:
        raise PrivacyPlanError(
            f"the loader takes {len(private_loader)} steps per epoch but the DP plan assumed "
            f"{plan.steps_per_epoch}; keep the batch size and dataset fixed for the whole run"
        )
    return private_model, private_opt, private_loader, engine


def _fused_optimizer(opacus: DPOptimizer, module: FusedClippingModule) -> FusedDPOptimizer:
    """The same DP optimizer Opacus built (σ, C, expected batch size, generator, accountant hook), fused."""
    fused = FusedDPOptimizer(
        opacus.original_optimizer, clipping=module,
        noise_multiplier=opacus.noise_multiplier, max_grad_norm=opacus.max_grad_norm,
        expected_batch_size=opacus.expected_batch_size, loss_reduction=opacus.loss_reduction,
        generator=opacus.generator, secure_mode=opacus.secure_mode,
    )
    fused.attach_step_hook(opacus.step_hook)
    return fused
