"""DESIGN §3 enforced: no package imports against the map, in code or in strings.

A module path handed to a subprocess (``python -m client.runtime``) or to
Flower (``"coordinator.app:app"``) is an import too: it makes the importing
side depend on the other at run time. Docstrings and messages are prose and
never match the full-string pattern below.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BELOW: dict[str, set[str]] = {
    "lifecycle": set(),
    "privacy": {"lifecycle"},
    "federation": {"privacy", "lifecycle"},
    "client": {"federation", "privacy", "lifecycle"},
    "coordinator": {"federation", "privacy", "watermark", "lifecycle"},
    "watermark": {"lifecycle"},
    "serving": {"lifecycle", "watermark"},
    "simulations": {"lifecycle", "privacy", "federation", "client", "coordinator", "watermark", "serving"},
}
BELOW["fedguard"] = {*BELOW, "fedguard"} - {"fedguard"}
PACKAGES = tuple(BELOW)
MODULE_STRING = re.compile(rf"^(?:-m\s+)?({'|'.join(p for p in PACKAGES if p != 'fedguard')})"
                           r"(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?$")
"""A module path in a string; ``fedguard.<package>`` strings are logger names (DESIGN §7 item 9), not modules."""


def _imported(tree: ast.AST) -> list[tuple[int, str, str]]:
    """(line, top-level package, how) of every import and every module-path string in ``tree``."""
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0], "import") for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0], "import"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = MODULE_STRING.match(node.value.strip())
            if match:
                found.append((node.lineno, match.group(1), f"string {node.value!r}"))
    return found


def _violations(package: str) -> list[str]:
    allowed = BELOW[package] | {package}
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, target, how in _imported(ast.parse(path.read_text(encoding="utf-8"))):
            if target in PACKAGES and target not in allowed:
                out.append(f"{path.relative_to(ROOT)}:{line}: {package} → {target} ({how})")
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_against_the_map(package: str) -> None:
    assert _violations(package) == []


def test_the_check_sees_imports_and_module_strings() -> None:
    tree = ast.parse("import coordinator.app\nfrom serving import x\ncmd = ['-m', 'client.runtime']\n"
                     "app = 'coordinator.app:app'\ndoc = 'see coordinator.app for why'\n")
    assert sorted((line, target, how.split()[0]) for line, target, how in _imported(tree)) == [
        (1, "coordinator", "import"), (2, "serving", "import"), (3, "client", "string"), (4, "coordinator", "string")]
