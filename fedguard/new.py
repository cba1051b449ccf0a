"""``fedguard new``: scaffold a Flower app that federates your own PyTorch model with fedguard.

Like ``flwr new``, it writes a project folder: ``pyproject.toml`` with
``[tool.flwr.app]`` (fedguard's ServerApp and ClientApp as the components,
the run config naming your model), a model module (an ``nn.Module`` class),
a data loader that writes the pooled CSV and its site schema, a job file for
a deployment (``fedguard run launch job.toml``) and a README. The data loader
runs once at creation, so the project trains out of the box::

    fedguard new my-app
    fedguard simulate --app my-app --data my-app/data/records.csv --schema my-app/data/schema.toml

Nothing here imports torch: the templates are text, and the data loader runs
in its own interpreter.
"""

from __future__ import annotations

import keyword
import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lifecycle.errors import ConfigurationError, StateError

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")

PYPROJECT = '''[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
description = "A fedguard federation of {package}.model:Net (scaffolded by fedguard new)"
requires-python = ">=3.11"
dependencies = ["fedguard"]

[tool.hatch.build.targets.wheel]
packages = ["{package}"]

[tool.flwr.app]
publisher = "{publisher}"

[tool.flwr.app.components]
# fedguard's coordinator and site agent: DP-SGD, secure aggregation, ledger, watermark, signing, registry
serverapp = "coordinator.app:app"
clientapp = "client.app:app"

[tool.flwr.app.config]
# the run config (fedguard's keys, docs/models.md); --app makes these the defaults of fedguard simulate's flags
model = "{package}.model:Net"
model-kwargs = '{{"hidden": 32}}'
fix-model = false
num-server-rounds = 3
dp-epsilon = 3.0
secure-aggregation = "secagg+"
watermark = "trigger-set"
model-name = "{registry_name}"
'''

MODEL = '''"""The model this federation trains: any torch.nn.Module that Opacus can train under DP-SGD.

fedguard builds it as ``Net(in_features=..., num_classes=..., **model_kwargs)``
and puts its own input standardization in front of it, so ``forward`` gets
the schema's features (standardized) as a float32 ``[batch, in_features]``
matrix and returns ``[batch, num_classes]`` logits. Avoid batch norm (it mixes
the examples of a batch; use GroupNorm or LayerNorm), or pass --fix-model to
let Opacus replace it. The SHA-256 of this file is pinned in the model's
signed ML-BOM: the coordinator and every site must run the same file.
"""

from __future__ import annotations

import torch
from torch import nn


class Net(nn.Module):
    """Two hidden layers with a residual connection: something the built-in MLP is not."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(in_features, hidden)
        self.block = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(h + self.block(h))
'''

DATA = '''"""The data loader: the pooled records as a CSV and its site schema (TOML), for fedguard simulate --data.

Replace ``load`` with your own source; ``python -m {package}.data`` rewrites
``data/records.csv`` and ``data/schema.toml`` (docs/site-data.md describes
the schema). In a deployment each site keeps its own file next to its agent.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from sklearn.datasets import load_breast_cancer

LABEL = "diagnosis"


def load() -> pd.DataFrame:
    """The records: one row each, numeric feature columns and the label column."""
    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.rename(columns=lambda c: c.replace(" ", "_"))
    frame[LABEL] = [bunch.target_names[i] for i in frame.pop("target")]
    return frame


def schema(frame: pd.DataFrame) -> str:
    """The site schema of ``frame``: every feature a float, the label's values."""
    values = ", ".join(f'"{{v}}"' for v in sorted(frame[LABEL].unique()))
    lines = [f'label = "{{LABEL}}"', f"label-values = [{{values}}]", "", "[columns]"]
    lines += [f'{{c}} = {{{{ type = "float" }}}}' for c in frame.columns if c != LABEL]
    return "\\n".join(lines) + "\\n"


def main(folder: Path = Path(__file__).resolve().parents[1] / "data") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    frame = load()
    frame.to_csv(folder / "records.csv", index=False)
    (folder / "schema.toml").write_text(schema(frame), encoding="utf-8")


if __name__ == "__main__":
    main()
'''

JOB = '''# A deployment's job (fedguard run launch job.toml): the run config's keys, flat (docs/runs.md).
# The coordinator and every site need {package}/ importable (pip install -e . in this folder).
model = "{package}.model:Net"
model-kwargs = '{{"hidden": 32}}'
fix-model = false
num-server-rounds = 3
num-sites = 3
dp-epsilon = 3.0
secure-aggregation = "secagg+"
model-name = "{registry_name}"
'''

README = '''# {name}

A fedguard federation of your own PyTorch model, `{package}/model.py:Net`.

```bash
python -m {package}.data      # (re)writes data/records.csv and data/schema.toml
fedguard simulate --app . --data data/records.csv --schema data/schema.toml
```

Everything stays on: DP-SGD (Opacus checks the model first and lists every
problem at once; `--fix-model` lets it replace what it can), SecAgg+, the
privacy ledger, the trigger-set watermark, signing and the registry. The
model's ML-BOM names `{package}.model:Net` and the SHA-256 of `model.py`.
For a deployment, `job.toml` is the job (`fedguard run launch job.toml`).
'''


def _package(name: str) -> str:
    package = name.replace("-", "_").lower()
    if keyword.iskeyword(package):
        raise ConfigurationError(f"'{name}' gives the Python package '{package}', a keyword; choose another name")
    return package


def scaffold(folder: Path, name: str, *, publisher: str = "you", data: bool = True) -> list[Path]:
    """Write the project ``name`` into ``folder`` (which must not exist); return the files written.

    Raises
    ------
    ConfigurationError
        ``name`` is not a project name (letters, digits, ``-``, ``_``).
    StateError
        ``folder`` exists, or the data loader fails.
    """
    if not _NAME.match(name):
        raise ConfigurationError(f"'{name}' is not a project name: start with a letter; use letters, digits, - or _")
    if folder.exists():
        raise StateError(f"'{folder}' already exists; choose a new folder (fedguard new never overwrites)")
    package = _package(name)
    values = {"name": name, "package": package, "publisher": publisher,
              "registry_name": name.lower().replace("_", "-")}
    files = {
        folder / "pyproject.toml": PYPROJECT, folder / "job.toml": JOB, folder / "README.md": README,
        folder / package / "__init__.py": '"""{name}: a fedguard federation."""\n',
        folder / package / "model.py": MODEL, folder / package / "data.py": DATA,
    }
    for path, template in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values), encoding="utf-8")
    written = list(files)
    if data:
        done = subprocess.run([sys.executable, "-m", f"{package}.data"], cwd=folder, capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            raise StateError(f"the data loader {package}/data.py failed: {done.stderr.strip()[-500:]}")
        written += [folder / "data" / "records.csv", folder / "data" / "schema.toml"]
    return written


def new(
    name: Annotated[str, typer.Argument(help="Project name (a folder of that name is created).")],
    directory: Annotated[Path | None, typer.Option(
        "--dir", help="Where to create it (default: ./NAME).")] = None,
    publisher: Annotated[str, typer.Option("--publisher", help="[tool.flwr.app] publisher.")] = "you",
) -> None:
    """Scaffold a Flower app with your own PyTorch model (pyproject, model, data loader, job file)."""
    console = Console()
    folder = directory if directory is not None else Path(name)
    written = scaffold(folder, name, publisher=publisher)
    for path in written:
        console.print(f"  created {path}", highlight=False)
    console.print(f"[green]project '{name}' is ready[/green]; run it:\n"
                  f"  fedguard simulate --app {folder} --data {folder}/data/records.csv "
                  f"--schema {folder}/data/schema.toml", highlight=False)
