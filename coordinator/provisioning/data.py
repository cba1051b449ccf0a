"""``fedguard coordinator data``: declare the federation's data contract and write the held-out reference set.

From one file in the contract's own columns (CSV or Parquet) and the
contract's TOML (:mod:`federation.contract`), checked completely first (every
problem at once), it writes::

    FEDGUARD_HOME/federation/contract.json         what every bundle issued from now on carries
    FEDGUARD_HOME/federation/reference/test.csv    the held-out set, encoded as the sites encode theirs
                                      schema.json  features, target, labels (what the ServerApp reads)
                                      contract.json  the contract the runs send to the sites

A job whose ``data-dir`` is empty evaluates on that folder
(``coordinator.app.reference_folder``). The declaration is one audit event
(``federation.contract``, with the contract's digest), in the same
transaction as the files it writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coordinator.provisioning.federation import FederationLayout
from federation.contract import CONTRACT_FILE, DataContract
from federation.schema import encode
from federation.tabular import read_table, write_csv
from lifecycle import audit
from lifecycle.errors import StateError
from lifecycle.registry import Registry


@dataclass(frozen=True)
class DeclaredContract:
    """What ``coordinator data`` wrote, and the contract it replaced (its digest), if any."""

    contract: DataContract
    contract_path: Path
    reference: Path
    rows: int
    previous: str | None

    @property
    def changed(self) -> bool:
        return self.previous is not None and self.previous != self.contract.digest

    def to_dict(self) -> dict[str, object]:
        c = self.contract
        return {"digest": c.digest, "features": list(c.features), "label": c.label,
                "label_values": list(c.label_values), "record_id": c.record_id, "rows": self.rows,
                "contract": str(self.contract_path), "reference": str(self.reference), "previous": self.previous,
                "changed": self.changed}


def declare_contract(layout: FederationLayout, registry: Registry, data: Path, schema: Path, *,
                     out: Path | None = None, actor: str = "cli") -> DeclaredContract:
    """Check ``data`` against the contract in ``schema``, then write the contract and the reference set.

    Raises
    ------
    federation.schema.SchemaValidationError
        The file does not match the contract; its report lists every problem. Nothing is written.
    ConfigurationError
        The contract file is invalid, or the data file is missing or unreadable.
    """
    federation = layout.read_config().federation  # a clear error when there is no federation yet
    contract = DataContract.load(schema)
    table = read_table(data)
    checked = contract.check(table.header, table.cells, table.num_rows, str(data))
    checked.report.raise_if_invalid()
    x, y = encode(checked, contract.site_schema(), contract.features, contract.label, len(contract.label_values),
                  contract.label_values)
    previous = DataContract.read(layout.contract).digest if layout.contract.is_file() else None
    folder = (out or layout.reference).resolve()
    with registry.transaction() as session:
        audit.record(session, "federation.contract", actor=actor, subject=federation,
                     details={"digest": contract.digest, "previous": previous, "features": len(contract.features),
                              "reference_rows": int(y.shape[0]), "reference": str(folder)})
        _write_reference(folder, contract, x, y)
        contract.write(layout.contract)
    return DeclaredContract(contract, layout.contract, folder, int(y.shape[0]), previous)


def _write_reference(folder: Path, contract: DataContract, x: np.ndarray, y: np.ndarray) -> None:
    """Write test.csv, schema.json and contract.json into ``folder`` (each file replaced atomically; nothing else)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staged = folder / ".test.csv.new"
        write_csv(staged, x, y, list(contract.features), contract.label)
        staged.replace(folder / "test.csv")
        staged = folder / ".schema.json.new"
        staged.write_text(json.dumps(contract.data_schema().to_dict(), indent=2) + "\n", encoding="utf-8")
        staged.replace(folder / "schema.json")
        contract.write(folder / CONTRACT_FILE)
    except OSError as exc:
        raise StateError(f"cannot write the reference set to {folder}: {exc.strerror or exc}; "
                         "nothing was declared") from exc
