"""Utility under strong privacy: a fast, in-process replay of ``fedguard simulate``'s training, for sweeps.

One configuration × seed takes about a second on one core, against half a
minute to several minutes for a real run, so the record-level DP settings
(batch size, local epochs, rounds, learning rate, clipping norm, hidden
size, server optimiser) can be swept over several seeds. What it replays,
exactly as a simulation does (checked against real runs: docs/research.md,
"Utility under strong privacy"):

* the data: :func:`simulations.data.sites.split` (same held-out test set and
  Dirichlet partition for a seed), as float32 features / int64 labels, which
  is what the sites read back from their CSVs;
* the model: :func:`lifecycle.architecture.build_model` seeded as the
  coordinator seeds it, with the input standardization from the coordinator's
  held-out set (``coordinator.app._initial_model``);
* each site's round: ``client.app.train``'s seeds, the DP plan fixed in the
  first round (:func:`client.training.plan_for`) and
  :func:`client.training.train_locally` itself (Opacus / fused DP-SGD);
* the coordinator: each update clipped to ``clip-norm`` (``client.protection``),
  FedAvg weighted by examples, the aggregate guard's accuracy check (an
  aggregate that lowers held-out accuracy by more than ``max-accuracy-drop``
  is retried, which replays the same seeds, so it is skipped), then the
  server optimiser's step (:class:`coordinator.strategies.server_optimizer.ServerOptimizerStrategy`).

What it leaves out: SecAgg+'s fixed-point quantisation (its rounding error is
~1e-6 per weight, far below the DP noise), and Flower/Ray themselves.

Usage (from the repository root)::

    PYTHONPATH=$PWD python benchmarks/dp_utility_study.py --epsilons 1,3,8,0 --seeds 1,2,3,4,5 \\
        --grid batch_size=32,64 local_epochs=1,2 lr=0.1,0.3

``--grid`` takes ``field=v1,v2`` for any :class:`Setting` field; every
combination runs at every ε and seed; prints mean ± sd of the final-round
accuracy over the seeds (``--json`` writes every run).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from client.training import plan_for, train_locally
from coordinator.evaluation import evaluate
from coordinator.strategies.server_optimizer import ServerOptimizerStrategy, create_server_optimizer
from federation.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CLIP_NORM,
    DEFAULT_HIDDEN,
    DEFAULT_LOCAL_EPOCHS,
    DEFAULT_LR,
    DEFAULT_MAX_GRAD_NORM,
)
from federation.protocol import TrainConfig
from federation.tabular import TabularData
from lifecycle.architecture import ModelSpec, build_model, reference_standardization, set_standardization
from privacy.dp_sgd import DPPlan
from simulations.data.options import DataOptions
from simulations.data.sites import split

MAX_ACCURACY_DROP = 0.1  # coordinator.config DEFAULTS["max-accuracy-drop"]


@dataclass(frozen=True)
class Setting:
    """One run's choices (the ``fedguard simulate`` flags that matter for utility)."""

    dataset: str = "breast-cancer"
    sites: int = 5
    alpha: float = 0.5
    rounds: int = 5
    dp_epsilon: float = 1.0
    dp_delta: float = 1e-5
    batch_size: int = DEFAULT_BATCH_SIZE
    local_epochs: int = DEFAULT_LOCAL_EPOCHS
    lr: float = DEFAULT_LR
    max_grad_norm: float = DEFAULT_MAX_GRAD_NORM
    hidden: str = DEFAULT_HIDDEN
    strategy: str = "fedavg"
    server_lr: float = 0.0
    clip_norm: float = DEFAULT_CLIP_NORM
    momentum: float = 0.9
    """The sites' SGD momentum (``client.training`` uses 0.9; other values patch ``torch.optim.SGD`` here)."""
    lr_schedule: str = "constant"
    """``constant``, ``cosine`` (over rounds, to 0 after the last) or ``linear`` (to 1/rounds in the last round)."""


def _lr_factor(schedule: str, rnd: int, rounds: int) -> float:
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (rnd - 1) / rounds))
    if schedule == "linear":
        return (rounds - rnd + 1) / rounds
    return 1.0


@dataclass(frozen=True)
class _Data:
    sites: list[TabularData]
    test: TabularData
    names: tuple[str, ...]
    classes: int


_DATA: dict[tuple[str, int, float, int], _Data] = {}
_PLANS: dict[tuple[Any, ...], DPPlan] = {}
_NEW_PLANS: list[tuple[Any, ...]] = []


def _load_plans(path: Path) -> None:
    """Calibrating σ is most of a DP run's time here: reuse plans of earlier sweeps (same inputs, same σ)."""
    if path.is_file():
        for entry in json.loads(path.read_text()):
            _PLANS[tuple(entry["key"])] = DPPlan(**entry["plan"])


def _save_plans(path: Path) -> None:
    if _NEW_PLANS:
        path.write_text(json.dumps([{"key": list(k), "plan": asdict(p)} for k, p in _PLANS.items()]))
        _NEW_PLANS.clear()


def _data(s: Setting, seed: int) -> _Data:
    key = (s.dataset, s.sites, s.alpha, seed)
    if key not in _DATA:
        options = DataOptions(dataset=s.dataset, alpha=s.alpha, sites=s.sites, seed=seed)
        result = split(options)
        feats, labels = result.source.features, result.source.labels

        def table(rows: np.ndarray) -> TabularData:
            return TabularData(np.ascontiguousarray(feats[rows], dtype=np.float32),
                               np.ascontiguousarray(labels[rows], dtype=np.int64), "", Path("."))

        _DATA[key] = _Data([table(rows) for rows in result.partition.sites], table(result.test),
                           tuple(result.source.feature_names), len(result.source.label_names))
    return _DATA[key]


def _flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1).to(torch.float64) for v in state.values()])


def run(s: Setting, seed: int) -> list[float]:
    """Held-out accuracy after each round of one replayed simulation."""
    data = _data(s, seed)
    spec = ModelSpec(len(data.names), data.classes, tuple(int(h) for h in s.hidden.split(",") if h))
    torch.manual_seed(seed)
    model = build_model(spec)
    set_standardization(model, *reference_standardization(torch.from_numpy(data.test.features)))
    current = {k: v.clone() for k, v in model.state_dict().items()}
    accuracy = evaluate(model, data.test).accuracy
    _task_identity()
    server = ServerOptimizerStrategy.__new__(ServerOptimizerStrategy)  # only its step() is used
    optimizer = create_server_optimizer(s.strategy, s.server_lr)
    server.optimizer = optimizer  # type: ignore[assignment]
    plans: dict[int, DPPlan] = {}
    history: list[float] = []
    torch.set_num_threads(1)
    for rnd in range(1, s.rounds + 1):
        cfg = TrainConfig(server_round=rnd, total_rounds=s.rounds, local_epochs=s.local_epochs,
                          batch_size=s.batch_size, lr=s.lr * _lr_factor(s.lr_schedule, rnd, s.rounds),
                          dp_epsilon=s.dp_epsilon, dp_delta=s.dp_delta,
                          max_grad_norm=s.max_grad_norm, features=data.names, target="label", spec=spec, seed=seed)
        total = torch.zeros_like(_flat(current))
        weight = 0
        for i, site in enumerate(data.sites):
            local = build_model(spec)
            local.load_state_dict(current)
            generator = torch.Generator().manual_seed(seed * 1009 + rnd)
            torch.manual_seed(seed * 7919 + rnd)
            plan = None
            if cfg.dp_enabled:
                if i not in plans:
                    key = (s.dp_epsilon, s.dp_delta, site.num_examples, s.batch_size, s.rounds * s.local_epochs)
                    if key not in _PLANS:  # σ does not depend on the clipping norm
                        _PLANS[key] = plan_for(cfg, site)
                        _NEW_PLANS.append(key)
                    plans[i] = replace(_PLANS[key], max_grad_norm=s.max_grad_norm)
                plan = plans[i]
            with _momentum(s.momentum):
                result = train_locally(local, site, cfg, plan, generator=generator)
            delta = _flat(local.state_dict()) - _flat(current)
            norm = float(delta.norm())
            if norm > s.clip_norm:
                delta *= s.clip_norm / norm
            total += result.num_examples * delta
            weight += result.num_examples
        candidate = _unflat(current, _flat(current) + total / weight)
        model.load_state_dict(candidate)
        new_accuracy = evaluate(model, data.test).accuracy
        if new_accuracy < accuracy - MAX_ACCURACY_DROP:  # the guard's retry replays the same seeds: skipped
            model.load_state_dict(current)
        else:
            if optimizer is not None:
                stepped = server.step(rnd, _record(current), _record(candidate))
                candidate = {k: torch.from_numpy(stepped[k].numpy().copy()) for k in candidate}
                model.load_state_dict(candidate)
            current = {k: v.clone() for k, v in model.state_dict().items()}
        accuracy = evaluate(model, data.test).accuracy
        history.append(accuracy)
    return history


@contextlib.contextmanager
def _momentum(momentum: float) -> Iterator[None]:
    """Run ``train_locally`` with another SGD momentum than its 0.9 (a study knob, not a fedguard option)."""
    if momentum == 0.9:
        yield
        return
    chosen = momentum
    original = torch.optim.SGD
    torch.optim.SGD = lambda params, lr, momentum: original(params, lr=lr, momentum=chosen)  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        torch.optim.SGD = original  # type: ignore[misc]


def _task_identity() -> None:
    """Flower's messages need a run and task id, which only its engine sets (as tests/coordinator do)."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        setattr(TaskIdentity, attr, value)


def _unflat(like: dict[str, torch.Tensor], flat: torch.Tensor) -> dict[str, torch.Tensor]:
    out, at = {}, 0
    for key, value in like.items():
        out[key] = flat[at:at + value.numel()].reshape(value.shape).to(value.dtype)
        at += value.numel()
    return out


def _record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v.numpy())) for k, v in state.items()})


def _value(field: str, text: str) -> Any:
    kind = {f.name: f.type for f in fields(Setting)}[field]
    return {"int": int, "float": float, "str": str}[str(kind)](text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilons", default="1,3,8,0", help="record-level ε per site; 0 = no DP")
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--grid", nargs="*", default=[], help="field=v1,v2 (Setting fields)")
    parser.add_argument("--set", nargs="*", default=[], help="field=value, fixed for every run")
    parser.add_argument("--json", default="", help="write every run's per-round accuracies here")
    parser.add_argument("--plan-cache", default="", help="JSON file of calibrated DP plans, read and extended")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)  # the server optimisers log every step
    cache = Path(args.plan_cache) if args.plan_cache else None
    if cache is not None:
        _load_plans(cache)
    base = Setting(**{k: _value(k, v) for k, v in (item.split("=", 1) for item in args.set)})
    axes = {k: [_value(k, x) for x in v.split(",")] for k, v in (item.split("=", 1) for item in args.grid)}
    seeds = [int(x) for x in args.seeds.split(",")]
    runs: list[dict[str, Any]] = []
    names = list(axes)
    header = " | ".join([*names, "ε", "final acc mean ± sd", "min", "s/run"])
    sys.stdout.write(f"| {header} |\n|{'---|' * (len(names) + 4)}\n")
    for combo in itertools.product(*axes.values()):
        for eps in (float(e) for e in args.epsilons.split(",")):
            s = replace(base, dp_epsilon=eps, **dict(zip(names, combo, strict=True)))
            started = time.monotonic()
            finals = []
            for seed in seeds:
                history = run(s, seed)
                finals.append(history[-1])
                runs.append({"setting": asdict(s), "seed": seed, "accuracy": history})
            per_run = (time.monotonic() - started) / len(seeds)
            sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
            cells = [*(str(c) for c in combo), f"{eps:g}" if eps else "∞",
                     f"{statistics.mean(finals):.3f} ± {sd:.3f}", f"{min(finals):.3f}", f"{per_run:.1f}"]
            sys.stdout.write(f"| {' | '.join(cells)} |\n")
            sys.stdout.flush()
            if cache is not None:
                _save_plans(cache)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
