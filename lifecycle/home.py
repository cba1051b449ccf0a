"""The layout of ``FEDGUARD_HOME`` and the checks that it is usable.

Checking writability up front turns "permission denied" deep inside SQLite or
a safetensors write into one clear error before any state is touched.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lifecycle.errors import StateError


@dataclass(frozen=True)
class Home:
    """Paths inside one fedguard state directory."""

    root: Path

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def audit(self) -> Path:
        return self.root / "audit"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def ensure(self) -> Home:
        """Create the layout (keys 0700) and prove the root is writable.

        Raises
        ------
        StateError
            If the directory cannot be created or written.
        """
        try:
            for path in (self.root, self.artifacts, self.audit, self.runs):
                path.mkdir(parents=True, exist_ok=True)
            self.keys.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.keys, 0o700)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe-"):
                pass
        except OSError as exc:
            raise StateError(
                f"FEDGUARD_HOME '{self.root}' is not writable ({exc.strerror or exc}); "
                "set FEDGUARD_HOME to a directory you can write to"
            ) from exc
        return self


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
