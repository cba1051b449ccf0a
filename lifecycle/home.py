"""The layout of ``FEDGUARD_HOME`` and the checks that it is usable.

Checking writability up front turns "permission denied" deep inside SQLite or
a safetensors write into one clear error before any state is touched.
"""

from __future__ import annotations

import os
import re
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


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class SiteHome:
    """Where one site's own files live: ``FEDGUARD_HOME/site/NAME/``.

    The one place that names them: ``fedguard client start`` writes the
    SuperNode's log here and passes the audit log and privacy ledger paths to
    the ClientApp, whose defaults (a SuperNode started without those node
    config keys, a simulated site) are the same files. docs/deployment.md's
    table of where things live on the site is checked against it
    (``tests/test_docs_paths.py``).
    """

    root: Path

    @classmethod
    def under(cls, home: Path, site: str) -> SiteHome:
        """Site ``site``'s folder in ``home`` (characters outside ``[A-Za-z0-9._-]`` become ``_``)."""
        return cls(home / "site" / _UNSAFE.sub("_", site))

    @property
    def supernode_log(self) -> Path:
        """Flower's SuperNode log (``fedguard client start``)."""
        return self.root / "supernode.log"

    @property
    def agent_log(self) -> Path:
        """The site agent's own log: refused handshakes, forwarder and relay records (``fedguard client start``)."""
        return self.root / "agent.log"

    @property
    def audit_log(self) -> Path:
        """The site's audit log of outgoing messages (node config ``audit-path``)."""
        return self.root / "audit.jsonl"

    @property
    def ledger(self) -> Path:
        """The site's own privacy ledger (node config ``ledger-path``)."""
        return self.root / "ledger.db"

    @property
    def consent(self) -> Path:
        """The site's consent list (0600): withdrawn record ids and the withdrawal history (``consent-path``)."""
        return self.root / "consent.json"


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
