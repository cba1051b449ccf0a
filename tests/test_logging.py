"""One logger tree (DESIGN §7 item 9): every record reaches the operator's log of each long-running command.

Before this test, eight modules logged to bare names (``coordinator``,
``client``, ``lifecycle``, ``privacy.secagg``) while the others used
``fedguard.<package>``: ``fedguard coordinator start`` wrote only the bare
names to ``gateway.log`` and ``fedguard serve`` showed only the
``fedguard.*`` ones. Two checks keep it from coming back:

* every ``getLogger`` call in our packages names a logger under
  ``fedguard`` (read from the source, so a module nobody imports here is
  covered too);
* the logging set-up of ``coordinator start``, ``client start`` and
  ``serve`` — the very function each command calls, in a fresh process
  (logging is process-wide state, and the process is what the operator
  runs) — sends one record from each package's logger to the operator's
  log: ``logs/gateway.log`` for the coordinator, stderr (what a service
  manager writes to the log file) for the site agent and the server.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lifecycle", "privacy", "federation", "client", "coordinator", "watermark", "serving", "simulations")

#: Python run in a fresh process: the command's logging set-up, then one INFO record per package.
CHILD = """
import logging, logging.config, sys
from pathlib import Path
command, log_file, packages = sys.argv[1], Path(sys.argv[2]), sys.argv[3].split(",")
if command == "coordinator start":
    from coordinator.cli import _attach_log_handler
    _attach_log_handler(log_file)
elif command == "client start":
    from client.cli import _attach_log_handler
    _attach_log_handler()
else:
    import serving.cli as cli
    cli._attach_log_handler()
    logging.config.dictConfig(cli.log_config(cli.build_settings()))  # what uvicorn.run does next
for package in packages:
    logging.getLogger(f"fedguard.{package}").info("record from %s", package)
logging.shutdown()
"""


def test_the_packages_listed_are_every_package() -> None:
    """A new package joins the tree checks below (pyproject lists every package for mypy)."""
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["packages"]
    assert set(PACKAGES) == set(listed) - {"fedguard"}


def _logger_names(path: Path) -> list[tuple[int, str]]:
    """``(line, name)`` of every ``getLogger(...)`` call in ``path``.

    The root logger (no argument) is ``""``; a name that is not a literal is ``"<expr>"``.
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "getLogger":
            arg = node.args[0] if node.args else ast.Constant("")
            name = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else "<expr>"
            found.append((node.lineno, name))
    return found


def test_every_logger_of_our_packages_is_in_the_fedguard_tree() -> None:
    """No bare package name, no ``__name__`` (a bare module path), no computed name."""
    stray = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, name in _logger_names(path):
                ours = name == "fedguard" or name.startswith("fedguard.")
                third_party = name != "<expr>" and name.split(".")[0] not in (*PACKAGES, "fedguard")
                if not (ours or third_party):
                    stray.append(f"{path.relative_to(ROOT)}:{line}: getLogger({name!r})")
    assert stray == []


def test_the_check_above_sees_a_bare_name(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text('import logging\nlogger = logging.getLogger("coordinator")\nx = logging.getLogger(__name__)\n'
                      'root = logging.getLogger()\n')
    assert _logger_names(source) == [(2, "coordinator"), (3, "<expr>"), (4, "")]


@pytest.mark.parametrize("command", ["coordinator start", "client start", "serve"])
def test_a_record_from_every_package_reaches_the_operators_log(command: str, tmp_path: Path) -> None:
    log_file = tmp_path / "operator.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGUARD_")}
    env.update(PYTHONPATH=str(ROOT), FEDGUARD_HOME=str(tmp_path / "home"), COLUMNS="200")
    with open(tmp_path / "stderr.log", "wb") as stderr:
        subprocess.run([sys.executable, "-c", CHILD, command, str(log_file), ",".join(PACKAGES)], cwd=ROOT,
                       env=env, stderr=stderr, check=True, timeout=120)
    operator_log = log_file if command == "coordinator start" else tmp_path / "stderr.log"
    text = operator_log.read_text()
    missing = [package for package in PACKAGES if f"record from {package}" not in text]
    assert missing == [], f"{command}: no record from {missing} in its log:\n{text}"
    if command == "coordinator start":
        assert "fedguard.lifecycle: record from lifecycle" in text  # the file names the logger
        assert "record from" not in (tmp_path / "stderr.log").read_text()  # INFO stays out of the console
