"""The ``fedguard`` command starts light: commands that neither train nor serve import no ML engine.

Behavioural, not timed: a fresh interpreter runs each command the way the
console script does and reports which heavy modules ended up in
``sys.modules`` (``benchmarks/cli_startup.py`` measures the times).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from typer.testing import CliRunner

from fedguard.cli import COMMANDS, app, load_command

HEAVY = ("torch", "flwr", "ray", "opacus", "tenseal", "onnx", "onnxruntime", "sklearn", "pyarrow", "fastapi",
         "uvicorn")
LIGHT_COMMANDS = (["--help"], ["site", "list"], ["models", "list"], ["keys", "create"], ["privacy", "ledger"])
LONG_SITE = "guys-and-st-thomas-nhs-foundation-trust-cardiology-london"

# Runs the commands one after another in one fresh interpreter, as the console script does
# (fedguard.cli.main), and prints, after each, the heavy modules it imported.
PROBE = """
import json, sys
from fedguard.cli import main
heavy, commands = json.loads(sys.argv[1])
for args in commands:
    sys.argv = ["fedguard", *args]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, (args, exc.code)
    print(json.dumps({"args": args, "heavy": [m for m in heavy if m in sys.modules]}), file=sys.stderr)
"""

runner = CliRunner()


@pytest.fixture
def federation_home(fedguard_home: Path, tmp_path: Path) -> Path:
    """A FEDGUARD_HOME with a federation and one enrolled site (so ``site list`` has a row)."""
    assert runner.invoke(app, ["coordinator", "init", "--federation", "bench"]).exit_code == 0
    result = runner.invoke(app, ["site", "enroll", LONG_SITE, "--out", str(tmp_path / "site.bundle")])
    assert result.exit_code == 0, result.output
    return fedguard_home


def _run(home: Path, *args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FEDGUARD_HOME": str(home), "COLUMNS": str(columns), "TERM": "dumb"}
    env.pop("FEDGUARD_DATABASE_URL", None)
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120)


def test_light_commands_import_no_ml_engine(federation_home: Path) -> None:
    result = _run(federation_home, "-c", PROBE, json.dumps([HEAVY, LIGHT_COMMANDS]))
    assert result.returncode == 0, result.stderr
    reports = [json.loads(line) for line in result.stderr.splitlines() if line.startswith('{"args"')]
    assert [r["args"] for r in reports] == [list(a) for a in LIGHT_COMMANDS], result.stderr
    for report in reports:
        assert report["heavy"] == [], f"'fedguard {' '.join(report['args'])}' imported {report['heavy']}"


def test_help_lists_every_command_from_the_table_with_its_own_help_line() -> None:
    for name, entry in COMMANDS.items():
        command = load_command(name)
        assert command.name == name
        assert (command.help or "").strip().splitlines()[0] == entry.help, name


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_working_help(name: str) -> None:
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert COMMANDS[name].help.split()[0] in result.output
    command = load_command(name)
    if isinstance(command, click.Group):  # each subcommand's own --help too
        for sub in command.list_commands(click.Context(command)):
            assert runner.invoke(app, [name, sub, "--help"]).exit_code == 0, f"{name} {sub} --help"


def test_top_level_help_and_a_misspelt_command() -> None:
    listing = runner.invoke(app, ["--help"])
    assert listing.exit_code == 0 and all(name in listing.output for name in COMMANDS)
    wrong = runner.invoke(app, ["sitee", "list"])
    assert wrong.exit_code == 2 and "Did you mean 'site'" in wrong.output


def test_site_list_shows_whole_names_at_80_columns(federation_home: Path) -> None:
    result = _run(federation_home, "-m", "fedguard.cli", "site", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), result.stdout
    assert "…" not in result.stdout
    row = next(line for line in lines if LONG_SITE in line)  # the whole name, on one line
    assert "active" in row and "site" in lines[0] and "status" in lines[0]
    assert "--json" in result.stdout  # says where the hidden columns are
