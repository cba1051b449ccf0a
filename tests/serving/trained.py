"""A small trained model whose BOM carries reference statistics, for the drift and extraction tests.

Its four features are noisy mixtures of two latent variables (so, like real
tabular data, they are correlated and fill only part of their bounding box);
the label is whether the latent point lies inside a circle, a boundary no
linear surrogate can copy.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np
import torch

from federation.reference import reference_edges
from lifecycle.architecture import build_model, set_standardization
from lifecycle.bom.reference import ReferenceStats, histogram
from lifecycle.packaging import publish_model
from lifecycle.registry import Registry, VersionRecord
from tests.conftest import make_publication

MIX = np.array([[1.0, 0.8, -0.5, 2.0], [0.3, -1.0, 1.0, 1.0]])
OFFSET = np.array([0.0, 1.0, -1.0, 5.0])


def sample(n: int, seed: int, shift: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` instances (float32) and their true labels; ``shift`` is added to the features."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 2))
    x = latent @ MIX + OFFSET + 0.2 * rng.normal(size=(n, 4))
    if shift is not None:
        x = x + shift
    return x.astype(np.float32), ((latent**2).sum(axis=1) < 1.386).astype(np.int64)


def _adam(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 300, lr: float = 0.02) -> None:
    """Full-batch Adam by hand: ``torch.optim`` imports torch._dynamo on first use (~8 s here)."""
    params = [p for p in model.parameters() if p.requires_grad]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t in range(1, steps + 1):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p, m_i, v_i in zip(params, m, v, strict=True):
                assert p.grad is not None
                m_i.mul_(0.9).add_(p.grad, alpha=0.1)
                v_i.mul_(0.999).addcmul_(p.grad, p.grad, value=0.001)
                p.sub_(lr * (m_i / (1 - 0.9**t)) / ((v_i / (1 - 0.999**t)).sqrt() + 1e-8))


@lru_cache(maxsize=1)
def _trained() -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    train_x, train_y = sample(1500, seed=1)
    held_x, _ = sample(500, seed=2)
    torch.manual_seed(0)
    pub = make_publication()
    model = build_model(pub.spec)
    features = torch.from_numpy(held_x)
    set_standardization(model, features.mean(0), features.std(0))
    x, y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend (20x slower on shared cores)
    try:
        _adam(model, x, y)
    finally:
        torch.set_num_threads(threads)
    edges = reference_edges(held_x)
    with torch.no_grad():
        predicted = model(features).argmax(1).numpy()
    stats = ReferenceStats(pub.schema.features, edges, histogram(train_x, edges), pub.schema.labels,
                           tuple(int(c) for c in np.bincount(predicted, minlength=2)), ("site-0", "site-1"))
    return model.state_dict(), stats.to_dict()


def publish_trained(registry: Registry, name: str = "demo") -> VersionRecord:
    """Publish the trained model (with its reference statistics) as ``name``."""
    state, reference = _trained()
    pub = make_publication(name)
    pub.model.load_state_dict(state)
    return publish_model(registry, replace(pub, reference=reference))
