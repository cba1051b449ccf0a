"""Model weights on disk: safetensors only, never pickle."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lifecycle.errors import StateError


def save_weights(model: nn.Module, path: Path) -> None:
    """Write ``model``'s state dict (parameters and buffers) as safetensors."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path))


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load safetensors weights into ``model``; the key sets must match exactly."""
    try:
        tensors: dict[str, torch.Tensor] = load_file(str(path))
    except (OSError, ValueError, RuntimeError) as exc:
        raise StateError(f"cannot read weights '{path}': {exc}; re-export the model") from exc
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise StateError(
            f"weights '{path}' do not fit the architecture in the BOM: {exc}"
        ) from exc
    return model
