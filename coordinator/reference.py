"""Collect the sites' reference histograms and build the BOM's ``reference`` section.

The coordinator fixes the bin edges from its held-out set before the identity
query, each site answers with its counts over them, and this module sums them
(see :mod:`federation.reference` for the why and for what the counts disclose).
A site that sends no counts, or malformed ones, is left out of the sum and
named in a warning; the section lists the sites it includes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord
from torch import nn

from coordinator import logger
from federation.reference import COUNTS_KEY, Edges, ReferenceStats, encode_edges, reference_edges, split_counts
from federation.tabular import DataSchema, TabularData
from lifecycle.errors import ConfigurationError


@dataclass
class ReferenceCollector:
    """Sums the per-site histogram counts over ``edges`` (one entry per site name)."""

    edges: Edges
    per_site: dict[str, tuple[tuple[int, ...], ...]] = field(default_factory=dict)

    @classmethod
    def from_held_out(cls, test: TabularData) -> ReferenceCollector:
        """Edges from the quantiles of the coordinator's own held-out set."""
        return cls(reference_edges(test.features))

    def query(self, config: ConfigRecord) -> ConfigRecord:
        """``config`` plus the edges, for the identity query only (rounds do not carry them)."""
        return ConfigRecord({**dict(config), **encode_edges(self.edges)})

    def add(self, site: ConfigRecord) -> None:
        """Keep one site's counts (a site answering twice is counted once)."""
        name = str(site.get("name", "?"))
        if COUNTS_KEY not in site:
            logger.warning("reference statistics: site %s sent no histogram counts; left out", name)
            return
        try:
            self.per_site[name] = split_counts([int(c) for c in site[COUNTS_KEY]], self.edges)  # type: ignore[union-attr]
        except (ConfigurationError, TypeError, ValueError) as exc:
            logger.warning("reference statistics: site %s sent unusable counts (%s); left out", name, exc)

    def summed(self) -> tuple[tuple[int, ...], ...]:
        """The counts of every collected site, added bin by bin."""
        total = [np.zeros(len(e) + 1, dtype=np.int64) for e in self.edges]
        for counts in self.per_site.values():
            for j, row in enumerate(counts):
                total[j] += np.asarray(row, dtype=np.int64)
        return tuple(tuple(int(c) for c in row) for row in total)

    def section(self, model: nn.Module, schema: DataSchema, test: TabularData) -> dict[str, Any] | None:
        """The BOM section, with ``model``'s predicted classes on the held-out set; ``None`` without sites."""
        if not self.per_site:
            logger.warning("reference statistics: no site sent histogram counts; the model gets no reference")
            return None
        model.eval()
        with torch.no_grad():
            predicted = model(torch.from_numpy(test.features)).argmax(dim=1).numpy()
        predictions = np.bincount(predicted, minlength=len(schema.labels))[: len(schema.labels)]
        return ReferenceStats(
            features=schema.features, edges=self.edges, counts=self.summed(), classes=schema.labels,
            predictions=tuple(int(c) for c in predictions), sites=tuple(sorted(self.per_site)),
        ).to_dict()
