"""Round checkpoints: the global weights and the run's state after each aggregated round.

Written after every round's central evaluation, so a coordinator killed at
any moment (SIGKILL included) restarts from the last *completed* round. The
weights are safetensors, the state JSON (never pickle); each write goes to a
temporary file, is fsynced, then atomically renamed over the previous one, and
the state (which names the round) is renamed last, so a reader sees either
the old checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lifecycle.errors import StateError

WEIGHTS = "weights.safetensors"
STATE = "state.json"


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclass(frozen=True)
class Checkpoint:
    """The last completed round: its number, the weights after it, and the run's state."""

    round: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]

    def save(self, directory: Path) -> None:
        """Write atomically into ``directory`` (weights first, then the state naming the round)."""
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.weights.items()}
        state = {**self.state, "round": self.round}
        _atomic_write(directory / WEIGHTS, lambda tmp: save_file(tensors, tmp))
        _atomic_write(directory / STATE, lambda tmp: Path(tmp).write_text(json.dumps(state, indent=2, default=str)))

    @classmethod
    def load(cls, directory: Path) -> Checkpoint | None:
        """The checkpoint in ``directory``, or None when no round was completed yet."""
        state_path = directory / STATE
        if not state_path.exists():
            return None
        try:
            state = json.loads(state_path.read_text())
            weights = load_file(str(directory / WEIGHTS))
        except (OSError, ValueError, SafetensorError) as exc:
            raise StateError(
                f"checkpoint in '{directory}' is unreadable ({exc}); remove it to restart the run from round 1"
            ) from exc
        return cls(int(state.pop("round")), weights, state)
