"""The served MLP evaluated with numpy for request-sized batches.

A predict request usually carries one instance. For such a batch, PyTorch
spends its time on dispatch, not arithmetic: each operator call costs
microseconds of bookkeeping (and releases and re-takes the GIL), and a
forward pass through the default MLP with its softmax took ~100 µs of the
guarded path's CPU per request, more than the arithmetic by two orders of
magnitude (``benchmarks/serving.py``). :class:`MLPPlan` holds the same
weights as float32 numpy arrays and computes the same function (standardize,
``x @ W.T + b`` and ReLU per hidden layer, a last linear layer) in a handful
of numpy calls.

It is built from the loaded, verified module, never from anything else, and
only for the architecture fedguard builds (:func:`lifecycle.architecture.build_model`);
any other module gets no plan and is run by PyTorch as before. Results agree
with PyTorch's to float32 rounding (the summation order of a dot product may
differ): tests compare both on random batches. Large batches go to PyTorch,
whose kernels are faster there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from lifecycle.architecture import Standardize

MAX_ROWS = 64
"""Batches up to this many instances use the plan; larger ones use PyTorch."""


@dataclass(frozen=True)
class MLPPlan:
    """``Standardize → (Linear → ReLU)* → Linear`` as numpy float32 arrays (weights pre-transposed)."""

    mean: np.ndarray
    scale: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]

    @classmethod
    def of(cls, module: nn.Module) -> MLPPlan | None:
        """The plan of ``module``, or ``None`` if it is not exactly the MLP fedguard builds."""
        if not isinstance(module, nn.Sequential) or len(module) < 2:
            return None
        first, *rest = list(module)
        if type(first) is not Standardize or len(rest) % 2 != 1:
            return None
        linears = rest[0::2]
        activations = rest[1::2]
        if any(type(layer) is not nn.Linear or layer.bias is None for layer in linears):
            return None
        if any(type(layer) is not nn.ReLU for layer in activations):
            return None

        def array(tensor: object) -> np.ndarray:
            return np.ascontiguousarray(tensor.detach().to("cpu").float().numpy().copy())  # type: ignore[attr-defined]

        return cls(
            mean=array(first.mean),
            scale=array(first.scale),
            layers=tuple((np.ascontiguousarray(array(layer.weight).T), array(layer.bias)) for layer in linears),
        )

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The module's output for a float32 ``batch`` (rows × features)."""
        x: np.ndarray = (batch - self.mean) / self.scale
        last = len(self.layers) - 1
        for i, (weight, bias) in enumerate(self.layers):
            x = x @ weight
            x += bias
            if i < last:
                np.maximum(x, 0.0, out=x)
        return x


def softmax64(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (as ``torch.softmax(logits.to(float64), dim=1)``)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z
