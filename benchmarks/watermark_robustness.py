"""Watermark robustness study: both schemes, each task, against fine-tuning, pruning and extraction.

For each task (a model builder and a data set; the list is a parameter, so a
new model kind joins the table by adding a :class:`Task`) and each scheme
(``trigger-set``, ``weight-key``), it trains the model centrally on 75 % of the
data, embeds the watermark as the coordinator does (``create_scheme(name)``
with its defaults, :meth:`embed`), then measures the watermark (trigger
accuracy, or bit accuracy = 1 − bit error rate, with the p-value decision) and
the task accuracy on the held-out 25 % after each attack:

* **fine-tuning** by a thief holding 10 % of the data (the training split's
  first tenth), Adam lr 1e-3, batch 32, for 1, 5 and 20 epochs;
* **magnitude pruning** of every weight matrix (global, smallest |w| set to 0)
  at 10, 30, 50, 70 and 90 %;
* **model extraction through the guarded API**: a fresh model of the same
  architecture trained on the API's answers to the training split's inputs.
  The answers come from the exported ONNX model (:func:`lifecycle.export.export_onnx`,
  run by ONNX Runtime as ``fedguard serve`` runs it) through the API's own
  output hardening (:func:`serving.guards.outputs.shape_output`, default policy:
  labels only), called in-process instead of over HTTP for speed;

and the false-positive rate: the watermark measured on ``--independent``
models of the task trained from other seeds, which must not verify.

Run::

    python benchmarks/watermark_robustness.py [--tasks mlp-breast-cancer,mlp-digits] [--independent 10]

It prints a Markdown table (and writes it with ``--markdown``) and the wall time.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # before benchmarks/, whose serving.py would shadow the serving package

from lifecycle.architecture import DataSchema, ModelSpec, build_model, set_standardization  # noqa: E402
from lifecycle.export import export_onnx  # noqa: E402
from serving.guards.outputs import shape_output  # noqa: E402
from serving.models import ServedModel  # noqa: E402
from serving.runtime import OnnxModel  # noqa: E402
from serving.settings import OutputPolicy  # noqa: E402
from simulations.datasets import load_dataset  # noqa: E402
from watermark import WatermarkScheme, WatermarkSecret, create_scheme  # noqa: E402

SCHEMES = ("trigger-set", "weight-key")
FINE_TUNE_EPOCHS = (1, 5, 20)
PRUNE_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class Task:
    """A model kind on a data set: ``build(spec, x_train)`` returns a fresh model taking ``x`` as the data has it."""

    name: str
    dataset: str
    build: Callable[[ModelSpec, torch.Tensor], nn.Module]
    hidden: tuple[int, ...] = (32,)
    kind: str = "mlp"
    image_shape: tuple[int, ...] = ()


def build_builtin(spec: ModelSpec, x_train: torch.Tensor) -> nn.Module:
    """fedguard's built-in model of ``spec.kind`` (MLP, CNN) with its standardization fixed from the training split."""
    model = build_model(spec)
    scale = x_train.std(dim=0)
    scale[scale < 1e-6] = 1.0
    set_standardization(model, x_train.mean(dim=0), scale)
    return model


TASKS = {
    "mlp-breast-cancer": Task("mlp-breast-cancer", "breast-cancer", build_builtin),
    "mlp-digits": Task("mlp-digits", "digits", build_builtin),
    "cnn-digits": Task("cnn-digits", "digits", build_builtin, kind="cnn", image_shape=(1, 8, 8)),
}


@dataclass
class Settings:
    """How much work the study does (the smoke test shrinks it)."""

    train_steps: int = 300
    independent: int = 10
    fine_tune_epochs: tuple[int, ...] = FINE_TUNE_EPOCHS
    prune_fractions: tuple[float, ...] = PRUNE_FRACTIONS
    surrogate_steps: int = 300
    scheme_params: dict[str, dict[str, object]] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    task: str
    scheme: str
    attack: str
    watermark: float  # trigger accuracy, or bit accuracy (1 - bit error rate)
    verified: bool
    p_value: float
    task_accuracy: float


def split_data(dataset: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """75 / 25 stratified split of a bundled data set (tensors)."""
    from sklearn.model_selection import train_test_split  # type: ignore[import-untyped, unused-ignore]

    data = load_dataset(dataset)
    x_tr, x_te, y_tr, y_te = train_test_split(data.features, data.labels, test_size=0.25, random_state=seed,
                                              stratify=data.labels)
    return torch.tensor(x_tr), torch.tensor(y_tr), torch.tensor(x_te), torch.tensor(y_te)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 1e-2) -> nn.Module:
    """Full-batch Adam (the coordinator's aggregate stands in for this central model)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.autograd.backward(F.cross_entropy(model(x), y))
        optimizer.step()
    return model


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def fine_tune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    """The thief's fine-tuning: Adam lr 1e-3, batch 32, on its 10 % of the data."""
    tuned = copy.deepcopy(model).requires_grad_(True)
    optimizer = torch.optim.Adam(tuned.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for batch in (order[start:start + 32] for start in range(0, len(y), 32)):
            optimizer.zero_grad()
            torch.autograd.backward(F.cross_entropy(tuned(x[batch]), y[batch]))
            optimizer.step()
    return tuned


def prune(model: nn.Module, fraction: float) -> nn.Module:
    """Global magnitude pruning of every weight of 2+ dimensions: the smallest ``fraction`` set to 0."""
    pruned = copy.deepcopy(model)
    weights = [p for p in pruned.parameters() if p.dim() >= 2]
    magnitudes = torch.cat([p.detach().abs().flatten() for p in weights])
    cutoff = torch.quantile(magnitudes, fraction)
    with torch.no_grad():
        for p in weights:
            p.mul_((p.abs() > cutoff).to(p))
    return pruned


def api_labels(model: nn.Module, queries: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The guarded API's answers: the ONNX export in ONNX Runtime, through the API's output hardening."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_onnx(model, queries.shape[1], path)
        data = path.read_bytes()
    runtime = OnnxModel(data, sha256=hashlib.sha256(data).hexdigest(), num_features=queries.shape[1], ref="study")
    schema = DataSchema(features=tuple(f"x{i}" for i in range(queries.shape[1])))
    served = ServedModel("study", 1, "0" * 64, runtime, schema)
    fields = shape_output(served, queries.numpy().astype(np.float32), OutputPolicy())  # labels only
    answers = torch.tensor(fields["predictions"])
    assert int(answers.max()) < num_classes
    return answers


def extract(task: Task, spec: ModelSpec, victim: nn.Module, x_train: torch.Tensor, steps: int,
            seed: int) -> nn.Module:
    """A surrogate of the victim's architecture trained on the API's labels for the training inputs."""
    labels = api_labels(victim, x_train, spec.num_classes)
    torch.manual_seed(10_000 + seed)
    return train(task.build(spec, x_train), x_train, labels, steps)


def study(tasks: Sequence[Task], settings: Settings, schemes: Sequence[str] = SCHEMES) -> list[Row]:
    """Every (task, scheme, attack) row of the table."""
    rows: list[Row] = []
    for task in tasks:
        x_tr, y_tr, x_te, y_te = split_data(task.dataset)
        test = (x_te, y_te)
        spec = ModelSpec(in_features=x_tr.shape[1], num_classes=int(y_tr.max()) + 1, hidden=task.hidden,
                         kind=task.kind, image_shape=task.image_shape)
        torch.manual_seed(0)
        base = train(task.build(spec, x_tr), x_tr, y_tr, settings.train_steps)
        thief = slice(0, max(1, len(y_tr) // 10))
        surrogate_attack = extract(task, spec, base, x_tr, settings.surrogate_steps, 0)
        independents = []
        for seed in range(1, settings.independent + 1):
            torch.manual_seed(seed)
            independents.append(train(task.build(spec, x_tr), x_tr, y_tr, settings.train_steps))
        for name in schemes:
            scheme = create_scheme(name, **settings.scheme_params.get(name, {}))
            generator = torch.Generator().manual_seed(1234)
            secret = scheme.generate(base, spec, generator=generator)
            marked = scheme.embed(base, secret, generator=generator).model

            row = functools.partial(measured, task, scheme, secret, test)
            rows.append(row("none (unmarked model)", base))
            rows.append(row("none (watermarked)", marked))
            for epochs in settings.fine_tune_epochs:
                rows.append(row(f"fine-tune 10 % data, {epochs} ep", fine_tune(marked, x_tr[thief], y_tr[thief],
                                                                                 epochs, seed=epochs)))
            for fraction in settings.prune_fractions:
                rows.append(row(f"prune {fraction:.0%}", prune(marked, fraction)))
            rows.append(row("extraction via API (labels)",
                            extract(task, spec, marked, x_tr, settings.surrogate_steps, 1)))
            rows.append(row("extraction of the unmarked model", surrogate_attack))
            false = [scheme.measure(m, secret) for m in independents]
            positives = sum(v.verified for v in false)
            rows.append(Row(task.name, name, f"independent models: {positives}/{len(false)} verify",
                            float(np.mean([v.trigger_accuracy for v in false])), positives > 0,
                            min(v.p_value for v in false),
                            float(np.mean([accuracy(m, x_te, y_te) for m in independents]))))
    return rows


def measured(task: Task, scheme: WatermarkScheme, secret: WatermarkSecret, test: tuple[torch.Tensor, torch.Tensor],
             attack: str, model: nn.Module) -> Row:
    """One row: the watermark found in ``model`` and the task accuracy it keeps."""
    found = scheme.measure(model, secret)
    return Row(task.name, scheme.name, attack, found.trigger_accuracy, found.verified, found.p_value,
               accuracy(model, *test))


def markdown(rows: Sequence[Row]) -> str:
    lines = ["| task | scheme | attack | watermark acc. | verified | p-value | task acc. |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.task} | {r.scheme} | {r.attack} | {r.watermark:.3f} | {'yes' if r.verified else 'no'} | "
              f"{r.p_value:.1e} | {r.task_accuracy:.3f} |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of: {', '.join(TASKS)}")
    parser.add_argument("--independent", type=int, default=10, help="independently trained models per task")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    rows = study([TASKS[name] for name in args.tasks.split(",")], Settings(independent=args.independent))
    table = markdown(rows)
    wall = time.perf_counter() - started
    text = f"{table}\n\nwall time {wall:.0f} s (1 torch thread)\n"
    if args.markdown:
        args.markdown.write_text(text)
    print(text)  # noqa: T201 - a benchmark script's output


if __name__ == "__main__":
    main()
