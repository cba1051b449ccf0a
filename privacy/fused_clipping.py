"""Fused per-example clipping for models made of ``nn.Linear`` and per-example, parameter-free layers.

Why this exists: on fedguard's default MLP (30-32-2, 1,122 parameters, batch
32) every Opacus grad-sample mode spends 3-9x a plain SGD step, almost all of
it Python overhead per layer and per parameter (materializing per-sample
gradients, then norms, clip factors, one einsum, noise and scaling per
parameter; ``benchmarks/dp_sgd.py``). For a linear layer ``y = a Wᵀ + b``
the per-example gradient is the outer product ``g_i a_iᵀ`` (and ``g_i`` for
the bias), where ``a_i`` is the example's input and ``g_i`` the gradient of
its loss at the layer's output. Hence, without materializing it,

* its norm is ``‖g_i‖·‖a_i‖`` (``‖g_i‖²·(‖a_i‖² + 1)`` squared, with the bias)
  (Goodfellow 2015, "Efficient per-example gradient computations"; the
  same identity as Opacus' ghost clipping, Li et al. 2022, "Large Language
  Models Can Be Strong Differentially Private Learners"), and
* the *clipped sum* over the batch is one matmul, ``(c ⊙ g)ᵀ a`` with
  ``c_i = min(1, C / (‖∇_i‖ + 1e-6))`` (Opacus' own clip factor).

:class:`FusedClippingModule` runs the model's layers itself, keeps each
linear layer's input and asks autograd to retain the gradient at its output
(``retain_grad``, no Python hook during the backward pass). The parameters
enter the graph detached, so the ordinary backward pass computes output
gradients only (no weight gradients that clipping would throw away) and
``p.grad`` is only ever what ``step()`` writes: the clipped, noised
gradient. Nothing runs twice.

What is kept from Opacus (wrap, never fork): the ``PrivacyEngine`` still
validates the model, builds the Poisson-sampling ``DPDataLoader``, the
accountant and its step hook; :class:`FusedDPOptimizer` *is* a
``DPOptimizer`` and only replaces how the noised, clipped gradient is
formed: the same σ·C Gaussian noise per parameter (Opacus' own generator
and ``secure_mode`` noise), the same division by the expected batch size
(``loss_reduction="mean"``), the same accountant step, and for an empty
Poisson batch the same pure-noise step. Equivalence is tested against
Opacus' per-sample gradients in ``tests/privacy/test_fused_clipping.py``.

What voids the guarantee (each raises or is refused, never silently
accepted): a layer that mixes examples of a batch (batch norm, attention
over the batch) or whose per-example gradient is not an outer product (a
linear layer applied to 3-D inputs, or shared by two places of the model). Such models are
refused by :func:`unsupported_layers` and train with Opacus' ``ew`` mode
instead, as are in-place activations (they would overwrite the retained
output gradient's tensor); a non-2-D input to a linear layer, or two
forward passes before one step, raise at run time. Virtual steps
(``signal_skip_step``) are not supported. Forward hooks registered on the
inner linear layers do not run in training (the wrapper calls
``F.linear``).

Notes
-----
Abadi et al. (2016), "Deep Learning with Differential Privacy" (the
mechanism); Goodfellow (2015), arXiv:1510.01799 (per-example norms of linear
layers from activations and output gradients); Yousefpour et al. (2021),
"Opacus: User-Friendly Differential Privacy Library in PyTorch".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _generate_noise
from torch import nn
from torch.nn import functional as F

from lifecycle.architecture import Standardize
from lifecycle.errors import ConfigurationError

#: Parameter-free layers that act on each example on its own (so per-example
#: gradients of the linear layers around them stay outer products).
PER_EXAMPLE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Sequential, nn.Identity, nn.Flatten, Standardize,
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus,
    nn.Dropout,
)

_vector_norm, _hypot = torch.linalg.vector_norm, torch.hypot

#: Opacus' clip factor: ``C / (norm + 1e-6)``, at most 1 (``DPOptimizer.clip_and_accumulate``).
_CLIP_EPS = 1e-6


class FusedClippingError(ConfigurationError):
    """The model was used in a way the fused path cannot clip exactly; use Opacus' path instead."""


def unsupported_layers(model: nn.Module) -> list[str]:
    """Names (``name: Type``) of the submodules that rule the fused path out; empty when it applies.

    A module qualifies if it is an ``nn.Linear`` whose parameters all train,
    or one of :data:`PER_EXAMPLE_LAYERS` without parameters and not in
    place; and no layer may appear twice (weight sharing).
    """
    found: list[str] = []
    seen: set[int] = set()
    for name, module in model.named_modules(remove_duplicate=False):
        label = f"{name or '<root>'}: {type(module).__name__}"
        if id(module) in seen and list(module.parameters()):
            found.append(f"{label} (used twice)")
            continue
        seen.add(id(module))
        own = list(module.parameters(recurse=False))
        if type(module) is nn.Linear:
            if not all(p.requires_grad for p in own):
                found.append(f"{label} (partly frozen)")
        elif type(module) not in PER_EXAMPLE_LAYERS or own:
            found.append(label)
        elif getattr(module, "inplace", False):
            found.append(f"{label} (in place)")
    return found


def _flat_layers(module: nn.Module) -> Iterator[nn.Module]:
    """The layers in the order ``nn.Sequential`` runs them (nested containers unrolled)."""
    if type(module) is nn.Sequential:
        for child in module:
            yield from _flat_layers(child)
    else:
        yield module


class FusedClippingModule(nn.Module):
    """Runs a Linear-only model exactly as ``nn.Sequential`` does, keeping what fused clipping needs.

    In training (module in train mode, gradients enabled) it keeps, for
    every forward pass, each linear layer's input ``a`` and output ``y``
    (``y.retain_grad()``, or ``y`` is a leaf for the first layer), so that
    after ``backward()`` the output gradient ``g = y.grad`` is there. The
    parameters enter the graph detached, so ``backward()`` computes output
    gradients only and leaves ``p.grad`` alone; :meth:`write_noised_grads`
    (called by ``FusedDPOptimizer.step``) then sets ``p.grad`` to the
    clipped, noised gradient. In evaluation it simply calls the model.

    Parameters
    ----------
    model
        A model for which :func:`unsupported_layers` is empty (raises
        :class:`FusedClippingError` otherwise).
    """

    def __init__(self, model: nn.Module) -> None:
        problems = unsupported_layers(model)
        if problems:
            raise FusedClippingError(
                f"fused clipping supports only nn.Linear and per-example parameter-free layers; "
                f"found {', '.join(problems)}: use Opacus' per-sample gradients (clipping='opacus')"
            )
        super().__init__()
        self._module = model
        self.linears: list[nn.Linear] = [m for m in model.modules() if type(m) is nn.Linear]
        # (weight, bias) for a linear layer, the module itself otherwise, in nn.Sequential's order; the
        # parameter objects are those the optimizer holds and updates in place
        self._steps: list[tuple[torch.Tensor, torch.Tensor | None] | nn.Module] = [
            (layer.weight, layer.bias) if type(layer) is nn.Linear else layer for layer in _flat_layers(model)
        ]
        self._params: list[tuple[torch.Tensor, torch.Tensor | None]] = [(m.weight, m.bias) for m in self.linears]
        self._kept: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        self._one = torch.ones(())  # for hypot(‖a‖, 1); a 0-d CPU tensor also broadcasts on other devices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return self._module(x)  # type: ignore[no-any-return]
        kept = []
        for step in self._steps:
            if not isinstance(step, tuple):
                x = step(x)
                continue
            if x.dim() != 2:
                raise FusedClippingError(
                    f"fused clipping needs 2-D inputs (batch, features) to linear layers, got shape "
                    f"{tuple(x.shape)}; flatten first or use Opacus' per-sample gradients"
                )
            weight, bias = step
            # the parameters enter detached: backward computes only the output gradients clipping needs,
            # and step() forms each parameter's gradient once, already clipped (no wasted weight grads)
            y = F.linear(x, weight.detach(), None if bias is None else bias.detach())
            if y.requires_grad:
                y.retain_grad()
            else:
                y.requires_grad_()  # the first linear layer's output: a leaf whose .grad is g
            kept.append((x.detach() if x.requires_grad else x, y))
            x = y
        self._kept.append(kept)
        return x

    def clear(self) -> None:
        """Forget what the last forward pass kept (``zero_grad`` and every step call this)."""
        self._kept.clear()

    def _pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(input, output gradient) per linear layer, from exactly one forward and its backward."""
        kept = self._kept
        passes = len(kept)
        last = kept.pop() if passes else []
        kept.clear()  # a refused step must not leak into the next one
        if passes != 1:
            raise FusedClippingError(
                f"fused clipping needs exactly one training forward pass per step, got {passes}; "
                "call zero_grad, forward, backward and step once per batch (no gradient accumulation)"
            )
        pairs = []
        for x, y in last:
            g = y.grad
            if g is None:
                raise FusedClippingError("no gradient reached a linear layer's output: call backward() before step()")
            pairs.append((x, g))
        return pairs

    def write_noised_grads(
        self, *, max_grad_norm: float, noise_std: float, scale: float, mean_loss: bool,
        noise: Callable[[float, torch.Size], torch.Tensor],
    ) -> None:
        """Set each parameter's ``.grad`` to ``(Σ_i clip_C(∇_i) + N(0, noise_std²)) · scale``.

        ``∇_i`` is example i's gradient (the output gradients times the batch
        size when the loss is a batch mean, as Opacus' grad samplers do), and
        ``noise(std, shape)`` draws Gaussian noise of that shape, called in
        the optimizer's parameter order (weight, bias, per layer). Every
        operation is batched over examples: a handful of kernels per layer,
        whatever the batch size.
        """
        pairs = self._pairs()
        norm: torch.Tensor | None = None
        for (x, g), (_, bias) in zip(pairs, self._params, strict=True):
            # ‖g_i a_iᵀ‖² + ‖g_i‖² (bias) = ‖g_i‖² (‖a_i‖² + 1): the layer's per-example norm
            x_norm = _vector_norm(x, dim=1)
            layer = _vector_norm(g, dim=1).mul_(_hypot(x_norm, self._one) if bias is not None else x_norm)
            norm = layer if norm is None else _hypot(norm, layer)
        assert norm is not None
        # k · min(1, C / (‖∇_i‖ + 1e-6)) with ‖∇_i‖ = m·n_i (m = batch for a mean loss, as Opacus' grad
        # samplers scale; n_i from the output gradients) and k = m · scale, so that Σ_i factor_i g_i a_iᵀ
        # is the scaled clipped sum; C / (m·n_i + ε) is computed as (C/m) / (n_i + ε/m)
        m = max(float(pairs[0][0].shape[0]), 1.0) if mean_loss else 1.0
        k = m * scale
        factor = norm.add_(_CLIP_EPS / m).reciprocal_().mul_(max_grad_norm * k / m).clamp_(max=k)
        std = noise_std * scale
        for (x, g), (weight, bias) in zip(pairs, self._params, strict=True):
            g_t = g.t()
            weight.grad = noise(std, weight.shape).addmm_(g_t * factor, x)
            if bias is not None:
                bias.grad = noise(std, bias.shape).addmv_(g_t, factor)


class FusedDPOptimizer(DPOptimizer):  # type: ignore[misc]  # opacus is untyped
    """Opacus' ``DPOptimizer`` with the clipped sum formed by :class:`FusedClippingModule`.

    Same constructor as ``DPOptimizer`` plus ``clipping``; noise, scaling,
    the accountant's step hook and the wrapped optimizer's step are
    Opacus'. The noise per parameter is drawn in the same order and with
    the same generator as ``DPOptimizer.add_noise``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, clipping: FusedClippingModule, **kwargs: Any) -> None:
        super().__init__(optimizer, **kwargs)
        self.clipping = clipping
        self._all_params = [p for group in self.param_groups for p in group["params"]]
        self._device = self.params[0].device if self.params else torch.device("cpu")
        self._noise_kwargs: dict[str, Any] = {} if self._device.type == "cpu" else {"device": self._device}
        if self.generator is not None:
            self._noise_kwargs["generator"] = self.generator
        layer_params = [p for layer in clipping.linears for p in layer.parameters()]
        if [id(p) for p in self.params] != [id(p) for p in layer_params]:
            raise FusedClippingError(
                "the optimizer's parameters are not the model's linear layers' parameters in order; "
                "pass model.parameters() to the optimizer"
            )

    @property
    def accumulated_iterations(self) -> int:
        """Always 1: with Poisson sampling Opacus forbids accumulating batches, and so does this path."""
        return 1

    def _noise(self, std: float, shape: torch.Size) -> torch.Tensor:
        if self.secure_mode:
            noise: torch.Tensor = _generate_noise(std, torch.empty(shape, device=self._device), self.generator,
                                                  secure_mode=True)
            return noise
        # the non-secure branch of Opacus' _generate_noise, without its unused zeros tensor
        return torch.normal(0.0, std, shape, **self._noise_kwargs)

    def pre_step(self, closure: Callable[[], float] | None = None) -> bool:
        """Clip, noise and scale into ``p.grad`` (Opacus' ``clip_and_accumulate``, ``add_noise``, ``scale_grad``)."""
        if self._check_skip_next_step():
            raise FusedClippingError("fused clipping does not support virtual steps (signal_skip_step)")
        mean_loss = self.loss_reduction == "mean"
        scale = 1.0 / (self.expected_batch_size * self.accumulated_iterations) if mean_loss else 1.0
        self.clipping.write_noised_grads(
            max_grad_norm=self.max_grad_norm, noise_std=self.noise_multiplier * self.max_grad_norm,
            scale=scale, mean_loss=mean_loss, noise=self._noise,
        )
        if self.step_hook:
            self.step_hook(self)
        self._is_last_step_skipped = False
        return True

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the kept activations and clear ``p.grad`` (the backward pass never writes it on this path)."""
        self.clipping.clear()
        if set_to_none:  # what Optimizer.zero_grad(set_to_none=True) does, minus its profiler scaffolding
            for p in self._all_params:
                p.grad = None
        else:
            self.original_optimizer.zero_grad(False)
