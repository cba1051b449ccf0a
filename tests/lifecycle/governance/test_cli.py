"""``fedguard policy set|show|history`` and ``fedguard models gates``: output and documented exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from fedguard.cli import main
from lifecycle.registry import Registry
from tests.lifecycle.governance.sample import SAMPLE


def fedguard(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the ``fedguard`` entry point in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["fedguard", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fedguard_home: Path) -> Any:
    return lambda *args: fedguard(monkeypatch, capsys, *args)


def test_policy_set_show_history(run: Any, tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(SAMPLE)
    code, out, _ = run("policy", "set", "breast-cancer", str(path))
    assert code == 0 and "policy version 1 set" in out and "max-site-epsilon" in out
    code, out, _ = run("policy", "set", "breast-cancer", str(path), "--json")
    assert code == 0 and json.loads(out)["changed"] is False
    code, out, _ = run("policy", "show", "breast-cancer", "--json")
    shown = json.loads(out)
    assert shown["version"] == 1 and shown["document"] == SAMPLE and shown["stages"]["production"]["min-accuracy"]
    code, out, _ = run("policy", "history", "breast-cancer", "--json")
    assert [r["version"] for r in json.loads(out)] == [1] and json.loads(out)[0]["actor"].startswith("user:")


@pytest.mark.parametrize(("args", "code", "says"), [
    (["policy", "set", "demo", "{bad}"], 2, "unknown criterion 'min-acuracy' in [staging]"),
    (["policy", "set", "demo", "{missing}"], 2, "cannot read the policy file"),
    (["policy", "show", "ghost"], 4, "no model named 'ghost'"),
    (["policy", "show", "demo", "--version", "3"], 4, "no policy version 3"),
    (["models", "gates", "ghost:1"], 4, "no model named 'ghost'"),
    (["models", "gates", "demo:9"], 4, "has no version 9"),
    (["models", "gates", "demo", "--stage", "prod"], 2, "unknown stage 'prod'"),
])
def test_bad_input_is_one_line_and_a_documented_exit_code(run: Any, registry: Registry, published: Any,
                                                           tmp_path: Path, args: list[str], code: int,
                                                           says: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[staging]\nmin-acuracy = 0.9\n")
    args = [a.format(bad=bad, missing=tmp_path / "absent.toml") for a in args]
    result, out, err = run(*args)
    assert result == code, err
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_models_gates_shows_and_evaluates(run: Any, registry: Registry, published: Any, tmp_path: Path) -> None:
    code, out, _ = run("models", "gates", "demo", "--json")
    assert code == 0 and [d["stage"] for d in json.loads(out)] == ["production", "staging"]
    code, out, _ = run("models", "gates", "demo:1")
    assert code == 0 and "PASSED" in out and "signature-verified" in out and "consent-clean" in out
    path = tmp_path / "policy.toml"
    path.write_text("[production]\nmin-accuracy = 0.9\n")
    assert run("policy", "set", "demo", str(path))[0] == 0
    code, out, _ = run("models", "gates", "demo", "--stage", "production", "--env", "clinic-north", "--evaluate",
                       "--json")
    (decision,) = json.loads(out)
    assert (decision["trigger"], decision["environment"], decision["policy_version"], decision["passed"]) == (
        "manual", "clinic-north", 1, False)
    assert decision["results"][0] == {"criterion": "min-accuracy", "passed": False, "measured": 0.5, "threshold": 0.9,
                                      "evidence": "metrics.accuracy (the coordinator's held-out set, signed in the "
                                                  "ML-BOM)"}
    code, out, _ = run("models", "show", "demo", "--json")
    assert [(g["stage"], g["environment"]) for g in json.loads(out)["gates"]][0] == ("production", "clinic-north")
    code, out, _ = run("models", "show", "demo")
    assert code == 0 and "production@clinic-north: FAIL min-accuracy" in out
