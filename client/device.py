"""Where a site trains: the CPU, or the GPU that its scheduler gave it.

Under the simulation engine each virtual site is a Ray actor. When the run
asks for GPU shares (``--gpus-per-site``), Ray places the actor on a GPU and
narrows ``CUDA_VISIBLE_DEVICES`` to it, so the site's ``cuda`` device *is* its
share. fedguard keeps Ray from narrowing it to nothing for zero-GPU actors
(``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0``), so a site must not train on a GPU
just because one is visible: the device is asked for explicitly, by the run
(``site-device``) or by the site's own node config (``device``), which wins.
"""

from __future__ import annotations

import os

import torch

from lifecycle.architecture import TRAINING_DEVICES
from lifecycle.errors import ConfigurationError


def check_device(requested: str) -> str:
    """``requested`` if it is ``cpu``, ``cuda`` (the GPU or fail) or ``auto`` (the GPU if seen), else an error."""
    if requested not in TRAINING_DEVICES:
        raise ConfigurationError(f"device '{requested}': choose one of {', '.join(TRAINING_DEVICES)}")
    return requested


def training_device(requested: str) -> torch.device:
    """The torch device for ``requested`` (see :func:`check_device`) in this process."""
    if check_device(requested) == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if requested == "auto":
        return torch.device("cpu")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    raise ConfigurationError(
        f"this site was asked to train on a GPU, but PyTorch sees none (torch {torch.__version__}, "
        f"CUDA build {torch.version.cuda or 'none'}, CUDA_VISIBLE_DEVICES={visible!r}); "
        "give the site a GPU, or train on the CPU (site-device 'cpu', or node config device='cpu')"
    )


def describe(device: torch.device) -> str:
    """A line for the site's reply and the run's outcome: ``cpu`` or ``cuda:0 (NVIDIA H100 ...)``.

    With ``CUDA_VISIBLE_DEVICES`` set (Ray sets it to the GPU it placed the
    site on) the line names that physical GPU too, so a run's outcome shows
    how the scheduler spread the sites.
    """
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f"; CUDA_VISIBLE_DEVICES={visible}" if visible else ""
    return f"cuda:{index} ({torch.cuda.get_device_name(index)}{where})"


def seed_torch(seed: int, device: torch.device) -> None:
    """Seed torch's global generators for training on ``device``: the CPU's, and the GPU's when it trains there.

    The same streams as ``torch.manual_seed`` for the devices a site uses,
    without its cost here: besides the CPU generator, ``torch.manual_seed``
    queues a seed for every accelerator backend not yet initialised (CUDA,
    XPU, MTIA), recording a formatted stack trace for each: ~0.3 ms per call
    at the depth of a Ray actor's stack against ~1 µs, paid by every
    simulated site every round.
    """
    if device.type not in ("cpu", "cuda"):
        torch.manual_seed(seed)
        return
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
