"""The software a model was made with: fedguard's own version and every installed package.

An ML-BOM that names only a handful of "main" libraries hides the transitive
ones (a numerical library under scikit-learn, a protobuf under Flower) that
change a model's behaviour just as much; CycloneDX asks for the whole
inventory. The inventory is that of the environment that published the model
(the coordinator; in simulation, the one process tree that also trained it).
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

MAIN_DEPENDENCIES = ("torch", "flwr", "opacus", "safetensors", "model-signing", "cryptography", "scikit-learn", "onnx",
                     "onnxruntime")
"""The libraries the lineage's ``dependencies`` summary names (the full list is in the BOM's components)."""

_SEPARATORS = re.compile(r"[-_.]+")


def canonical_name(name: str) -> str:
    """A distribution name normalised as PEP 503 does (and as ``pkg:pypi`` purls require)."""
    return _SEPARATORS.sub("-", name).lower()


@dataclass(frozen=True)
class InstalledPackage:
    """One installed Python distribution: its name as published and its version."""

    name: str
    version: str

    @property
    def purl(self) -> str:
        """The package URL, ``pkg:pypi/NAME@VERSION`` (purl-spec's PyPI rules: lower case, dashes)."""
        return f"pkg:pypi/{canonical_name(self.name)}@{self.version}"


def installed_packages() -> list[InstalledPackage]:
    """Every distribution importable in this environment, once each, sorted by canonical name.

    A distribution found twice on ``sys.path`` (an editable install beside a
    wheel) is listed once: the first one found, which is the one Python imports.
    Read once per ``sys.path`` (parsing ~500 metadata files took 0.3 s of every
    publication; Flower adds an app's folder to the path, which may hold more
    distributions): a package installed while a process runs is not what that
    process runs.
    """
    return list(_installed_packages(tuple(sys.path)))


@cache
def _installed_packages(path: tuple[str, ...]) -> tuple[InstalledPackage, ...]:
    seen: dict[str, InstalledPackage] = {}
    for dist in metadata.distributions(path=list(path)):
        name = dist.metadata["Name"]
        if not name or not dist.version:
            continue  # a broken install without metadata: nothing to name
        seen.setdefault(canonical_name(name), InstalledPackage(str(name), str(dist.version)))
    return tuple(seen[key] for key in sorted(seen))


def dependency_versions(packages: list[InstalledPackage] | None = None) -> dict[str, str]:
    """Versions of the libraries that shape a model's behaviour most (``not installed`` if absent)."""
    by_name = {canonical_name(p.name): p.version for p in (packages if packages is not None else installed_packages())}
    return {name: by_name.get(canonical_name(name), "not installed") for name in MAIN_DEPENDENCIES}


@cache
def code_version() -> str:
    """The version of fedguard, plus the git commit when running from a checkout (read once per process)."""
    try:
        version = metadata.version("fedguard")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    root = Path(__file__).resolve().parent.parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{commit}" if commit else version
