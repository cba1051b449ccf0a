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

One forward hook per linear layer keeps its input and a tensor hook its
output gradient from the ordinary backward pass; nothing runs twice.

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
linear layer applied to 3-D inputs or twice in one step). Such models are
refused by :func:`unsupported_layers` and train with Opacus' ``ew`` mode
instead; a linear layer applied twice or to non-2-D input raises at run
time. Virtual steps (``signal_skip_step``) are not supported.

Notes
-----
Abadi et al. (2016), "Deep Learning with Differential Privacy" (the
mechanism); Goodfellow (2015), arXiv:1510.01799 (per-example norms of linear
layers from activations and output gradients); Yousefpour et al. (2021),
"Opacus: User-Friendly Differential Privacy Library in PyTorch".
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _generate_noise
from torch import nn
from torch.utils.hooks import RemovableHandle

from lifecycle.architecture import Standardize
from lifecycle.errors import ConfigurationError

#: Parameter-free layers that act on each example on its own (so per-example
#: gradients of the linear layers around them stay outer products).
PER_EXAMPLE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Sequential, nn.Identity, nn.Flatten, Standardize,
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus,
    nn.Dropout,
)

#: Opacus' clip factor: ``C / (norm + 1e-6)``, at most 1 (``DPOptimizer.clip_and_accumulate``).
_CLIP_EPS = 1e-6


class FusedClippingError(ConfigurationError):
    """The model was used in a way the fused path cannot clip exactly; use Opacus' path instead."""


def unsupported_layers(model: nn.Module) -> list[str]:
    """Names (``name: Type``) of the submodules that rule the fused path out; empty when it applies.

    A module qualifies if it is an ``nn.Linear`` whose parameters all train,
    or one of :data:`PER_EXAMPLE_LAYERS` without parameters; and no module
    may appear twice (weight sharing).
    """
    found: list[str] = []
    seen: set[int] = set()
    for name, module in model.named_modules(remove_duplicate=False):
        label = f"{name or '<root>'}: {type(module).__name__}"
        if id(module) in seen and not isinstance(module, PER_EXAMPLE_LAYERS[1:]):
            found.append(f"{label} (used twice)")
            continue
        seen.add(id(module))
        own = list(module.parameters(recurse=False))
        if type(module) is nn.Linear:
            if not all(p.requires_grad for p in own):
                found.append(f"{label} (partly frozen)")
        elif type(module) not in PER_EXAMPLE_LAYERS or own:
            found.append(label)
    return found


class LinearClipping:
    """Keeps each linear layer's input and output gradient for one step, and forms the noised clipped sum.

    Parameters
    ----------
    model
        A model for which :func:`unsupported_layers` is empty.
    """

    def __init__(self, model: nn.Module) -> None:
        problems = unsupported_layers(model)
        if problems:
            raise FusedClippingError(
                f"fused clipping supports only nn.Linear and per-example parameter-free layers; "
                f"found {', '.join(problems)}: use Opacus' per-sample gradients (clipping='opacus')"
            )
        self.layers: list[nn.Linear] = [m for m in model.modules() if type(m) is nn.Linear]
        self.inputs: list[list[torch.Tensor]] = [[] for _ in self.layers]
        self.grads: list[list[torch.Tensor]] = [[] for _ in self.layers]
        self._keep: list[Callable[[tuple[torch.Tensor, ...]], None]] = [
            partial(_keep_first, grads) for grads in self.grads
        ]
        self._handles: list[RemovableHandle] = [
            layer.register_forward_hook(partial(self._capture, index)) for index, layer in enumerate(self.layers)
        ]

    def _capture(self, index: int, module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        if not (module.training and torch.is_grad_enabled()) or output.grad_fn is None:
            return  # evaluation or frozen: nothing to clip (Opacus also captures only in training)
        activation = inputs[0]
        if activation.dim() != 2:
            raise FusedClippingError(
                f"fused clipping needs 2-D inputs (batch, features) to linear layers, got shape "
                f"{tuple(activation.shape)}; flatten first or use Opacus' per-sample gradients"
            )
        self.inputs[index].append(activation.detach())
        # a pre-hook on the layer's own autograd node sees the gradient at its output, even when a
        # later in-place op (ReLU(inplace=True)) rewrites the output tensor; cheaper than Tensor.register_hook
        output.grad_fn.register_prehook(self._keep[index])

    def clear(self) -> None:
        """Forget the captured activations and gradients (called by ``zero_grad`` and after each step)."""
        for kept in (*self.inputs, *self.grads):
            kept.clear()

    def remove(self) -> None:
        """Detach the hooks from the model."""
        for handle in self._handles:
            handle.remove()
        self.clear()

    def _pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pairs = []
        for layer, inputs, grads in zip(self.layers, self.inputs, self.grads, strict=True):
            if len(inputs) != 1 or len(grads) != 1:
                raise FusedClippingError(
                    f"fused clipping needs exactly one forward and one backward of each linear layer per "
                    f"step, got {len(inputs)} forward(s) and {len(grads)} backward(s) of {layer}; call "
                    "zero_grad, forward, backward and step once per batch (no gradient accumulation)"
                )
            pairs.append((inputs[0], grads[0]))
        return pairs

    def write_noised_grads(
        self, *, max_grad_norm: float, noise_std: float, scale: float, mean_loss: bool,
        noise: Callable[[float, torch.Tensor], torch.Tensor],
    ) -> None:
        """Set each parameter's ``.grad`` to ``(Σ_i clip_C(∇_i) + N(0, noise_std²)) · scale``.

        ``∇_i`` is example i's gradient (the output gradients times the batch
        size when the loss is a batch mean, as Opacus' grad samplers do), and
        ``noise(std, reference)`` draws Gaussian noise shaped like ``reference``,
        called in the optimizer's parameter order (weight, bias, per layer).
        Every operation is batched over examples: a handful of kernels per
        layer, whatever the batch size.
        """
        try:
            pairs = self._pairs()
        finally:
            self.clear()  # a refused step must not leak into the next one
        batch = pairs[0][0].shape[0]
        sq_norms = torch.zeros(batch)
        for (activation, grad), layer in zip(pairs, self.layers, strict=True):
            act_sq = torch.linalg.vecdot(activation, activation)
            sq_norms.addcmul_(torch.linalg.vecdot(grad, grad), act_sq if layer.bias is None else act_sq.add_(1.0))
        # Opacus' factor min(1, C / (‖∇_i‖ + 1e-6)) with ∇_i = batch · (output gradient) for a mean loss,
        # times batch · scale so that the weighted output gradients sum to the scaled clipped sum
        per_batch = float(batch) if mean_loss else 1.0
        factor = sq_norms.sqrt_().mul_(per_batch).add_(_CLIP_EPS).reciprocal_().mul_(max_grad_norm).clamp_(max=1.0)
        weights = factor.mul_(per_batch * scale).unsqueeze(1)
        std = noise_std * scale
        for (activation, grad), layer in zip(pairs, self.layers, strict=True):
            weighted = grad * weights
            layer.weight.grad = noise(std, layer.weight).addmm_(weighted.t(), activation)
            if layer.bias is not None:
                layer.bias.grad = noise(std, layer.bias).add_(weighted.sum(0))


def _keep_first(kept: list[torch.Tensor], grad_outputs: tuple[torch.Tensor, ...]) -> None:
    """Autograd pre-hook: keep the gradient at a linear layer's output (changes nothing)."""
    kept.append(grad_outputs[0])


class FusedDPOptimizer(DPOptimizer):
    """Opacus' ``DPOptimizer`` with the clipped sum formed by :class:`LinearClipping`.

    Same constructor as ``DPOptimizer`` plus ``clipping``; noise, scaling,
    the accountant's step hook and the wrapped optimizer's step are
    Opacus'. The noise per parameter is drawn in the same order and with
    the same generator as ``DPOptimizer.add_noise``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, clipping: LinearClipping, **kwargs: Any) -> None:
        super().__init__(optimizer, **kwargs)
        self.clipping = clipping
        layer_params = {id(p) for layer in clipping.layers for p in layer.parameters()}
        if {id(p) for p in self.params} != layer_params:
            raise FusedClippingError(
                "the optimizer's parameters are not exactly the model's linear layers' parameters; "
                "pass model.parameters() to the optimizer"
            )

    @property
    def accumulated_iterations(self) -> int:
        """Always 1: with Poisson sampling Opacus forbids accumulating batches, and so does this path."""
        return 1

    def _noise(self, std: float, reference: torch.Tensor) -> torch.Tensor:
        if self.secure_mode:
            return _generate_noise(std, reference, self.generator, secure_mode=True)
        # the non-secure branch of Opacus' _generate_noise, without its unused zeros tensor
        return torch.normal(0.0, std, reference.shape, generator=self.generator, device=reference.device)

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
        self.clipping.clear()
        self.original_optimizer.zero_grad(set_to_none)
