"""The consent withdrawals a run leaves out (``fedguard retrain``), as the run config carries them.

A retrained run names, in its run config (``excludes-withdrawals``), every
withdrawal it excludes; the coordinator then refuses a site withdrawn as a
whole before round 1 (``coordinator.roster``, reason ``withdrawn``) and
writes the list into the new version's lineage (the ML-BOM's training section)
and its ``model.retrained`` audit event. A site that withdrew only some
records still trains: its agent leaves those records out itself.

The value is a flat string, ``ID:SCOPE:SITE`` entries joined by commas
(``"3:site:st-marys,4:records:guys"``), because Flower's run config holds
only scalars and ``flwr run --run-config`` cannot quote a JSON document.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lifecycle.errors import ConfigurationError

WHOLE_SITE = "site"
"""The scope of a withdrawal of a whole site (any other scope names some of its records)."""
_SITE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_SCOPE = re.compile(r"^[a-z-]{1,16}$")


@dataclass(frozen=True)
class ExcludedWithdrawal:
    """One withdrawal a run excludes: its registry id, the site, and whether the whole site or some records."""

    id: int
    site: str
    scope: str

    def __post_init__(self) -> None:
        if self.id < 1 or not _SITE.match(self.site) or not _SCOPE.match(self.scope):
            raise ConfigurationError(
                f"withdrawal {self.id} of site '{self.site}' (scope '{self.scope}') cannot be named in a run config: "
                "a site name of letters, digits, '.', '_' or '-' and a lowercase scope are needed")

    @property
    def whole_site(self) -> bool:
        return self.scope == WHOLE_SITE

    def to_dict(self) -> dict[str, Any]:
        """How the lineage and the audit event name it (``{"id", "site", "scope"}``)."""
        return {"id": self.id, "site": self.site, "scope": self.scope}


def encode(withdrawals: Iterable[ExcludedWithdrawal]) -> str:
    """The run config value for ``withdrawals`` (module docstring)."""
    return ",".join(f"{w.id}:{w.scope}:{w.site}" for w in sorted(withdrawals, key=lambda w: w.id))


def parse(value: str) -> tuple[ExcludedWithdrawal, ...]:
    """The withdrawals a run config value names; :class:`ConfigurationError` for a malformed one."""
    out = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        number, _, rest = item.partition(":")
        scope, _, site = rest.partition(":")
        if not number.isdigit() or not scope or not site:
            raise ConfigurationError(f"run-config 'excludes-withdrawals' entry '{item}' is not ID:SCOPE:SITE "
                                     "(e.g. '3:site:st-marys'); 'fedguard retrain' writes it")
        out.append(ExcludedWithdrawal(int(number), site, scope))
    return tuple(out)
