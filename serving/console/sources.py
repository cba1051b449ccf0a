"""What the console reads beyond the registry: runs, the privacy ledger, sites, retrain launches.

The serving tier may import only ``lifecycle`` and ``watermark`` (DESIGN §3),
while runs live in ``coordinator.runs``, the ledger in ``privacy.ledger`` and
enrolled sites in ``coordinator.provisioning``. So the console declares here
the small interfaces it reads them through, as values and
:class:`~typing.Protocol` classes, and the ``fedguard`` package (which may
import everything) implements them with those packages' own functions
(:mod:`fedguard.console`) and hands them to :func:`serving.app.create_app`.
A source left ``None`` makes its page say how to start the console with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class RunView:
    """One run as its progress log tells it: a simulation or a deployed run."""

    run_id: str
    kind: str
    """``simulation`` or ``deployment``."""
    status: str
    """``running``, ``done``, ``failed`` or ``stopped``."""
    rounds: tuple[dict[str, Any], ...] = ()
    """The ``round`` events, in order (round, rounds, sites, dropped, accuracy, epsilon_max, ...)."""
    config: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    """``name:version`` of the model the run published, once it did."""
    message: str = ""
    """The last stage or the failure, in words."""
    started: datetime | None = None
    site_epsilon: dict[str, float] = field(default_factory=dict)
    """ε spent per site in this run (from the ledger), when known."""


class RunsSource(Protocol):
    """Runs under ``FEDGUARD_HOME/runs`` (implemented over :mod:`coordinator.runs`)."""

    def runs(self) -> list[RunView]:
        """Every run, newest first."""

    def run(self, run_id: str) -> RunView:
        """One run; :class:`~lifecycle.errors.NotFoundError` when there is none by that id."""


@dataclass(frozen=True)
class BudgetRow:
    """A site's spend on one dataset manifest at one DP level, as ``fedguard privacy ledger`` shows it."""

    site: str
    manifest: str
    kind: str
    runs: int
    charges: int
    epsilon: float
    delta: float
    accountant: str
    epsilon_cap: float | None
    epsilon_remaining: float | None


@dataclass(frozen=True)
class ChargeView:
    """One ledger charge: the DP parameters behind a round's ε."""

    site: str
    manifest: str
    run_id: str
    round: int
    kind: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    created_at: datetime | None


class LedgerSource(Protocol):
    """The coordinator's privacy ledger (implemented over :mod:`privacy.ledger`)."""

    def budgets(self) -> list[BudgetRow]:
        """Every (site, manifest, kind) row with its composed ε, cap and remaining."""

    def charges(self, site: str | None = None) -> list[ChargeView]:
        """The charges, of one site or all, oldest first."""


@dataclass(frozen=True)
class SiteView:
    """An enrolled site: public material only."""

    name: str
    status: str
    cert_serial: str
    issued_at: datetime
    not_after: datetime
    credentials_issued: int
    revoked_at: datetime | None
    last_seen: datetime | None
    """When the site last took part in a round (its newest ledger charge); ``None``: never."""


class SitesSource(Protocol):
    """The federation's enrolment (implemented over :mod:`coordinator.provisioning`)."""

    def sites(self) -> list[SiteView]:
        """Every enrolled site, as ``fedguard site list`` shows them."""

    def enroll(self, name: str, *, actor: str) -> bytes:
        """Enrol ``name``; return its bundle file's bytes (private keys: handed out once, never stored here)."""

    def rotate(self, name: str, *, actor: str) -> bytes:
        """New credentials for ``name``; return the new bundle's bytes."""

    def revoke(self, name: str, *, actor: str, reason: str) -> None:
        """Revoke ``name`` for good."""

    def enrolled(self) -> list[str]:
        """Every site name this federation ever enrolled (for consent withdrawals)."""


class RetrainLauncher(Protocol):
    """Starts ``fedguard retrain REF`` in the background (implemented in :mod:`fedguard.console`)."""

    def __call__(self, ref: str, *, actor: str) -> str:
        """Launch the retrain of ``ref``; return a line saying where to follow it."""


@dataclass(frozen=True)
class ConsoleSources:
    """Everything the console reads beyond the registry; ``None``: that page is unavailable."""

    runs: RunsSource | None = None
    ledger: LedgerSource | None = None
    sites: SitesSource | None = None
    retrain: RetrainLauncher | None = None
