"""Test-only: virtual sites on real breast-cancer files, driven in-process through the real site ClientApp.

Each site is the exact ``client.app.make_client_app`` a simulation runs
(partition-id node config, the run's ``data-dir``), reached through the
in-memory grid of ``tests.privacy.secagg.harness`` instead of Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.clientapp.typing import Mod

from client.app import make_client_app
from federation.protocol import CLIP_NORM, TrainConfig
from federation.tabular import write_csv
from lifecycle.architecture import ModelSpec, build_model, reference_standardization, set_standardization
from privacy.updates import model_delta
from simulations.datasets import load_dataset
from tests.privacy.secagg.harness import LocalGrid

SPEC_HIDDEN = (8,)


def write_sites(data_dir: Path, sites: int, rows: int = 60) -> tuple[list[str], ModelSpec, ArrayRecord]:
    """``sites`` files of ``rows`` records each, and a global model standardized on all of them."""
    data = load_dataset("breast-cancer")
    names = list(data.feature_names)
    order = np.random.default_rng(0).permutation(len(data.labels))[: sites * rows]
    for site in range(sites):
        idx = order[site * rows:(site + 1) * rows]
        write_csv(data_dir / f"site-{site}.csv", data.features[idx], data.labels[idx], names, "label")
    spec = ModelSpec(len(names), 2, SPEC_HIDDEN)
    torch.manual_seed(0)
    model = build_model(spec)
    set_standardization(model, *reference_standardization(torch.from_numpy(data.features[order])))
    return names, spec, ArrayRecord(model.state_dict())


def train_config(names: Sequence[str], spec: ModelSpec, data_dir: Path, *, server_round: int = 1,
                 clip_norm: float | None = None) -> ConfigRecord:
    """The ``config`` record a coordinator sends (no DP; ``clip-norm`` for clear updates if given)."""
    record = TrainConfig(server_round, 2, 1, 16, 0.05, 0.0, 1e-5, 1.0, tuple(names), "label", spec, 7,
                         data_dir=str(data_dir)).to_record()
    if clip_norm is not None:
        record[CLIP_NORM] = clip_norm
    return record


class Sites:
    """``n`` virtual sites (partition ids 0…n−1) of one ClientApp; clear updates allowed unless ``protected``."""

    def __init__(self, n: int, *, mods: Sequence[Mod] = (), update_mods: Sequence[Mod] = (),
                 protected: bool = False) -> None:
        self.grid = LocalGrid(make_client_app(require_protection=protected, mods=mods, update_mods=update_mods), n)
        self.nodes = self.grid.get_node_ids()

    def train(self, site: int, arrays: ArrayRecord, config: ConfigRecord) -> np.ndarray:
        """Site ``site``'s update ``local − global`` for one clear train message."""
        message = Message(RecordDict({"arrays": arrays, "config": ConfigRecord(dict(config))}),
                          dst_node_id=self.nodes[site], message_type=MessageType.TRAIN)
        (reply,) = self.grid.send_and_receive([message])
        assert not reply.has_error(), reply.error
        return model_delta(reply.content.array_records["arrays"], arrays)
