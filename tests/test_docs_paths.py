"""The docs say where a site's and a coordinator's files live; the code's layouts produce exactly those paths.

Every path named in the docs' "where things live" tables (and the node
config defaults) is read here and compared, both ways, with the one class
that names it in the code: :class:`lifecycle.home.SiteHome` for a site,
:class:`coordinator.provisioning.FederationLayout` for the coordinator. The
functions that pick a default path (the ClientApp's audit log, the site's
privacy ledger, ``fedguard client start``) are called and must land there.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from coordinator.provisioning import FederationLayout
from lifecycle.home import SiteHome

DOCS = Path(__file__).resolve().parents[1] / "docs"
SITE = "st-marys"
SITE_FILES = {"supernode_log", "agent_log", "audit_log", "ledger", "consent"}
FEDERATION_FILES = {"config", "ca_cert", "ca_key", "server_cert", "server_key", "crl", "superlink_db",
                    "superlink_log", "gateway_log", "contract", "reference"}


def _table_after(doc: str, marker: str) -> list[list[str]]:
    """The rows (cells) of the first Markdown table after the line containing ``marker``."""
    lines = (DOCS / doc).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if marker in line)
    rows, seen = [], False
    for line in lines[start + 1:]:
        if line.startswith("|"):
            seen = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not set(cells[0]) <= {"-", ":", " "}:
                rows.append(cells)
        elif seen:
            break
    return rows[1:]  # without the header


def _paths(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _site_paths(home: Path) -> set[str]:
    layout = SiteHome.under(home, SITE)
    return {str(getattr(layout, name).relative_to(home)).replace(SITE, "NAME") for name in SITE_FILES}


def test_where_things_live_on_the_site(tmp_path: Path) -> None:
    documented = {p for row in _table_after("deployment.md", "Where things live on the site") for p in _paths(row[0])}
    assert documented == _site_paths(tmp_path)


def test_what_coordinator_init_writes(tmp_path: Path) -> None:
    rows = _table_after("deployment.md", "`init` writes, under `FEDGUARD_HOME/federation/`")
    documented = {re.sub(r" \(0600\)$", "", p).rstrip("/") for row in rows for p in _paths(row[0])}
    layout = FederationLayout.under(tmp_path)
    assert documented == {str(getattr(layout, name).relative_to(layout.root)) for name in FEDERATION_FILES}
    assert layout.root == tmp_path / "federation"


def test_node_config_defaults_and_state_directory_name_the_site_files(tmp_path: Path) -> None:
    defaults = {row[0].strip("`"): _paths(row[1]) for row in _table_after("site-data.md", "## Node config keys")}
    layout = SiteHome.under(Path("$FEDGUARD_HOME"), SITE)
    assert defaults["audit-path"] == [str(layout.audit_log).replace(SITE, "<site-name>")]
    assert defaults["ledger-path"] == [str(layout.ledger).replace(SITE, "<site-name>")]
    assert f"`{str(layout.ledger).replace(SITE, '<site>')}`" in (DOCS / "privacy.md").read_text()
    named = set(re.findall(r"^  (site/\S+)", (DOCS / "cli.md").read_text(), flags=re.MULTILINE))
    assert named == {p.replace("NAME", "<site>") for p in _site_paths(tmp_path)}


def test_the_code_writes_where_the_layout_says(fedguard_home: Path) -> None:
    from client.audit import default_audit_path
    from client.config import SiteIdentity
    from privacy.ledger.guard import _LEDGERS, default_site_ledger

    context: Any = SimpleNamespace(node_config={"site-name": SITE, "data-path": "x.csv"}, node_id=1)
    layout = SiteHome.under(fedguard_home, SITE)
    assert default_audit_path(context) == layout.audit_log
    assert SiteIdentity.from_context(context, SimpleNamespace(data_dir="")).consent_path == layout.consent  # type: ignore[arg-type]
    ledger = default_site_ledger(context, SITE)
    try:
        assert layout.ledger.is_file() and _LEDGERS[str(layout.ledger)] is ledger
    finally:
        _LEDGERS.pop(str(layout.ledger)).close()
