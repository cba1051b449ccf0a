"""Smoke test of ``benchmarks/watermark_robustness.py`` on a tiny setting: every attack row, both schemes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "watermark_robustness.py"


def load_study() -> ModuleType:
    """The script as a module (``benchmarks`` is not a package of ours: load it by path)."""
    spec = importlib.util.spec_from_file_location("watermark_robustness", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_the_study_runs_every_attack_on_a_tiny_setting() -> None:
    study = load_study()
    settings = study.Settings(
        train_steps=300, independent=2, fine_tune_epochs=(1,), prune_fractions=(0.5,), surrogate_steps=20,
        scheme_params={"trigger-set": {"size": 24, "max_steps": 400, "anchor_batch": 64},
                       "weight-key": {"bits": 32, "max_steps": 100, "anchor_batch": 32}},
    )
    rows = study.study([study.TASKS["mlp-breast-cancer"]], settings)
    attacks = ["none (unmarked model)", "none (watermarked)", "fine-tune 10 % data, 1 ep", "prune 50%",
               "extraction via API (labels)", "extraction of the unmarked model", "independent models: 0/2 verify"]
    assert [(r.scheme, r.attack) for r in rows] == [(s, a) for s in ("trigger-set", "weight-key") for a in attacks]
    for row in rows:
        assert 0.0 <= row.watermark <= 1.0 and 0.0 <= row.task_accuracy <= 1.0 and 0.0 <= row.p_value <= 1.0
    watermarked = [r for r in rows if r.attack == "none (watermarked)"]
    assert all(r.verified for r in watermarked)
    assert not any(r.verified for r in rows if r.attack.startswith(("none (unmarked", "independent")))
    table = study.markdown(rows)
    assert table.count("\n") == len(rows) + 1 and "| mlp-breast-cancer | weight-key |" in table
