"""Time one DP-SGD step against one plain SGD step on fedguard's default model: fused path and every Opacus mode.

Usage: ``python benchmarks/dp_sgd.py [--repeats 5] [--steps 300] [--threads 1] [--clock cpu|wall]``.

The model is the default MLP (``ModelSpec(30, 2, (32,))``: the breast-cancer
width), batch 32, SGD with momentum as in ``client/training.py``, one CPU
thread as a site's Ray actor runs it. A "step" is zero_grad, forward, loss,
backward (with per-sample clipping for DP) and optimizer step, on a fixed
batch, so data loading is left out of both sides. Every Opacus mode gives the
same guarantee (same σ, same clipping norm, same Poisson sampling); they only
differ in how per-sample gradients (or their norms) are computed:

* ``hooks``: module hooks compute per-sample gradients (Opacus' default).
* ``functorch``: ``torch.func.vmap(grad(...))`` per layer.
* ``ew``: PyTorch's expanded weights.
* ``ghost``: ghost clipping, per-sample gradient *norms* without
  materializing per-sample gradients, then a second backward pass.
* ``fused``: fedguard's own path (``privacy.dp_sgd.make_private``, what the
  sites run for this model): Opacus' engine, Poisson loader, accountant and
  noise, with the clipped sum formed in one matmul per layer
  (``privacy/fused_clipping.py``).

Every mode and the plain step are timed interleaved, ``--repeats`` times
each. ``--clock cpu`` (the default) times the training thread's CPU time
(``time.thread_time``), so other jobs on shared cores stretch both sides
less than wall-clock time would; ``--clock wall`` uses ``perf_counter``.
Prints the median time per step and the ratio to the plain step for each,
and appends one row (the fastest mode, all ratios in the notes) to
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from opacus import PrivacyEngine
from results import append_row, machine  # benchmarks/results.py (scripts run from benchmarks/)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lifecycle.architecture import ModelSpec, build_model
from privacy.dp_sgd import DPPlan, make_private

HERE = Path(__file__).resolve().parent
SPEC = ModelSpec(30, 2, (32,))
BATCH, N, SIGMA, CLIP = 32, 569, 1.0, 1.0
MODES = ("fused", "hooks", "functorch", "ew", "ghost")
CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}


def _data() -> tuple[TensorDataset, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N, SPEC.in_features, generator=generator)
    y = torch.randint(0, SPEC.num_classes, (N,), generator=generator)
    return TensorDataset(x, y), x[:BATCH], y[:BATCH]


def _plain_step() -> Callable[[torch.Tensor, torch.Tensor], None]:
    model = build_model(SPEC)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    return step


def _fused_step(dataset: TensorDataset) -> Callable[[torch.Tensor, torch.Tensor], None]:
    model = build_model(SPEC)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = DataLoader(dataset, batch_size=BATCH)
    steps = len(loader)  # Opacus' Poisson sample rate for this loader is 1/steps, as in the Opacus modes
    plan = DPPlan(target_epsilon=3.0, delta=1e-5, max_grad_norm=CLIP, sample_rate=1 / steps,
                  planned_steps=steps, noise_multiplier=SIGMA)
    private, private_opt, _, _ = make_private(model, optimizer, loader, plan, clipping="fused")
    criterion = nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        private_opt.zero_grad()
        criterion(private(x), y).backward()
        private_opt.step()
    return step


def _dp_step(mode: str, dataset: TensorDataset) -> Callable[[torch.Tensor, torch.Tensor], None]:
    if mode == "fused":
        return _fused_step(dataset)
    model = build_model(SPEC)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = DataLoader(dataset, batch_size=BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="rdp")
        if mode == "ghost":
            private, private_opt, criterion, _ = engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader, criterion=nn.CrossEntropyLoss(),
                noise_multiplier=SIGMA, max_grad_norm=CLIP, poisson_sampling=True, grad_sample_mode="ghost",
            )
        else:
            private, private_opt, _ = engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=SIGMA,
                max_grad_norm=CLIP, poisson_sampling=True, grad_sample_mode=mode,
            )
            criterion = nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        private_opt.zero_grad()
        criterion(private(x), y).backward()
        private_opt.step()
    return step


def _time(step: Callable[[torch.Tensor, torch.Tensor], None], x: torch.Tensor, y: torch.Tensor,
          steps: int, clock: Callable[[], float]) -> float:
    for _ in range(20):  # warm-up
        step(x, y)
    started = clock()
    for _ in range(steps):
        step(x, y)
    return (clock() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="cpu")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    parser.add_argument("--no-row", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    dataset, x, y = _data()
    modes = [m for m in args.modes.split(",") if m in MODES]
    times: dict[str, list[float]] = {"plain": [], **{m: [] for m in modes}}
    failed: dict[str, str] = {}
    for _ in range(args.repeats):  # interleaved, so drift hits every mode alike
        times["plain"].append(_time(_plain_step(), x, y, args.steps, clock))
        for mode in modes:
            if mode in failed:
                continue
            try:
                times[mode].append(_time(_dp_step(mode, dataset), x, y, args.steps, clock))
            except Exception as exc:  # noqa: BLE001 - a mode this Opacus/torch pair cannot run: reported in the row
                failed[mode] = f"{type(exc).__name__}: {exc}"[:120]
    plain = statistics.median(times["plain"])
    print(f"plain SGD step: median {plain * 1e6:.0f} µs  (MLP 30-32-2, batch {BATCH}, {args.threads} thread(s), "
          f"{args.clock} time)")
    ratios: dict[str, float] = {}
    for mode in modes:
        if mode in failed:
            print(f"DP-SGD [{mode:9s}]: failed ({failed[mode]})")
            continue
        median = statistics.median(times[mode])
        ratios[mode] = median / plain
        print(f"DP-SGD [{mode:9s}]: median {median * 1e6:.0f} µs  ratio {ratios[mode]:.2f}x")
    best = min(ratios, key=ratios.__getitem__)
    print(f"fastest: {best} at {ratios[best]:.2f}x plain (goal ≤ 1.5x); same σ={SIGMA}, C={CLIP}, Poisson sampling")
    notes = ", ".join(f"{m} {r:.2f}x" for m, r in ratios.items()) + "".join(f", {m} failed" for m in failed)
    notes += f"; {args.clock} time" + (" (thread CPU time)" if args.clock == "cpu" else "")
    load = os.getloadavg()[0]
    if load > 1.5:  # this benchmark's own thread accounts for about 1
        notes += f"; measured while other jobs shared the {os.cpu_count()} cores (load average {load:.1f})"
    row = (f"| {time.strftime('%Y-%m-%d')} | dp_sgd | DP-SGD step ({best}) vs plain SGD step, MLP 30-32-2, batch "
           f"{BATCH}, {args.threads} thread(s), median of {args.repeats}×{args.steps} | "
           f"{statistics.median(times[best]) * 1e6:.0f} µs | {plain * 1e6:.0f} µs | {ratios[best]:.2f}x | {notes} | "
           f"{machine()}, torch {torch.__version__} |")
    if not args.no_row:
        append_row(row)


if __name__ == "__main__":
    main()
