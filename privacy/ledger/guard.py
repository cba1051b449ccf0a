"""Enforcing caps: the coordinator's admission and the site agent's veto.

Two independent gates, so that neither side has to trust the other:

* **Coordinator** (:func:`admit`, :func:`reserve`): before a round it
  projects each candidate site's ε with the round's charge and leaves out a
  site that would exceed its cap; :func:`reserve` also records the charge
  (before the round: a failed round stays charged, a restarted round is not
  charged twice).
* **Site** (:func:`make_ledger_mod`): a client mod that, after local
  training and before the reply leaves the site, records the round's charges
  in the site's own ledger and replies with an error instead of the update if
  the charge would exceed the site's local cap, whatever the coordinator
  decided.

Notes
-----
Under site-level DP with amplification by sampling (McMahan et al. 2018),
*every* site in the population pays for every round, sampled or not: the
coordinator must charge the whole eligible population each round (reserve
with q), not only the sampled sites. A site sees only the rounds it is
sampled in, so its own ledger either trusts the declared plan and charges the
whole planned run at first contact (``site_sampling="declared"``) or assumes
nothing about the sampling and charges one un-amplified Gaussian step per
round it takes part in (``site_sampling="participation"``, q = 1; valid
whatever the coordinator does, and much more expensive).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context, Error, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from lifecycle.errors import ConfigurationError, FedguardError
from lifecycle.home import SiteHome
from lifecycle.settings import get_settings
from privacy.accountants import GaussianHistory
from privacy.ledger.base import ANY, Charge, PrivacyBudgetExceeded, PrivacyLedger, Projection
from privacy.ledger.charges import LEDGER_EPSILON, SITE_SAMPLING, DPReport, round_charges
from privacy.ledger.factory import SiteLedger
from privacy.records import config_record, required_config
from privacy.site_dp import CONFIG_KEY, SITE_RECORD, planned_rounds

logger = logging.getLogger("fedguard.privacy")

UNKNOWN_MANIFEST = "unknown"
Mod = Callable[[Message, Context, ClientAppCallable], Message]


@dataclass(frozen=True)
class Admission:
    """Sites that may take part in a round, and the projections of those left out."""

    admitted: tuple[str, ...]
    refused: tuple[Projection, ...]


def _manifest(ledger: PrivacyLedger, site: str, manifests: Mapping[str, str] | None) -> str:
    if manifests and site in manifests:
        return manifests[site]
    known = ledger.manifests(site)
    return known[0] if known else UNKNOWN_MANIFEST


def admit(ledger: PrivacyLedger, sites: Sequence[str], kind: str, extra: GaussianHistory,
          *, manifests: Mapping[str, str] | None = None) -> Admission:
    """Project every site's ε with ``extra`` added; leave out those over their cap. Writes nothing.

    ``manifests`` maps a site to the dataset manifest it trains on; a site
    without one is projected on its most recently charged manifest.
    """
    admitted, refused = [], []
    for site in sites:
        projection = ledger.project(site, _manifest(ledger, site, manifests), kind, extra)
        if projection.allowed:
            admitted.append(site)
        else:
            refused.append(projection)
            logger.warning("privacy ledger: site %s left out: projected ε=%.4g over cap %.4g",
                           site, projection.projected, projection.cap.epsilon if projection.cap else float("nan"))
    return Admission(tuple(admitted), tuple(refused))


def reserve(ledger: PrivacyLedger, sites: Sequence[str], *, run_id: str, round: int, kind: str,
            history: GaussianHistory, manifests: Mapping[str, str] | None = None,
            actor: str = "coordinator") -> Admission:
    """Charge ``history`` to each site for (run, round) before the round; leave out the refused.

    Idempotent per (site, manifest, run, round, kind): a coordinator that
    restarts and reserves the same round again is not charged twice.
    """
    admitted, refused = [], []
    for site in sites:
        charge = Charge(site, _manifest(ledger, site, manifests), run_id, round, kind,
                        history.noise_multiplier, history.sample_rate, history.steps, history.delta,
                        history.accountant)
        try:
            ledger.record(charge, actor=actor, enforce=True)
            admitted.append(site)
        except PrivacyBudgetExceeded as exc:
            refused.append(ledger.project(site, charge.manifest, kind, history))
            logger.warning("privacy ledger: %s", exc)
    return Admission(tuple(admitted), tuple(refused))


# --------------------------------------------------------------------------- site side

_LEDGERS: dict[str, PrivacyLedger] = {}


def _default_ledger_path(site: str) -> Path:
    """:attr:`SiteHome.ledger`, or the ledger a site kept at ``site-ledgers/<site>.db`` before it moved there.

    A site's ledger carries its spend across runs (its own veto): a new empty
    file in the new place would forget it, so the old file is used, with a
    warning, until the operator moves it.
    """
    home = get_settings().home
    layout = SiteHome.under(home, site)
    legacy = home / "site-ledgers" / f"{layout.root.name}.db"
    if legacy.is_file() and not layout.ledger.exists():
        logger.warning("site %s: using its privacy ledger at %s; move it to %s (the default place now)",
                       site, legacy, layout.ledger)
        return legacy
    return layout.ledger


def default_site_ledger(context: Context, site: str) -> PrivacyLedger:
    """The site's ledger named by its node config, opened once per process, caps applied.

    Node config keys: ``ledger-path`` (or its older name ``privacy-ledger``;
    default ``$FEDGUARD_HOME/site/<site>/ledger.db``,
    :class:`lifecycle.home.SiteHome`), ``epsilon-cap`` (every DP
    kind), ``record-epsilon-cap``, ``site-epsilon-cap``, ``reference-epsilon-cap`` and ``cap-delta``
    (default 1e-5).
    """
    node = context.node_config
    path = str(node.get("ledger-path") or node.get("privacy-ledger") or _default_ledger_path(site))
    ledger = _LEDGERS.get(path)
    if ledger is None:
        ledger = _LEDGERS.setdefault(path, SiteLedger.open(Path(path)))
    delta = float(node.get("cap-delta", 1e-5))
    for key, kind in (("epsilon-cap", ANY), ("record-epsilon-cap", "record"), ("site-epsilon-cap", "site"),
                      ("reference-epsilon-cap", "reference")):
        if key in node:
            ledger.set_cap(site, float(node[key]), delta, kind=kind, actor=f"site:{site}")
    return ledger


def _round_of(msg: Message) -> int:
    config = config_record(msg.content, "config")
    value = config.get("server-round") if config is not None else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if str(msg.metadata.group_id).isdigit():
        return int(msg.metadata.group_id)
    raise ConfigurationError("the train message names no server round; the site cannot account for it")


def site_charges(msg: Message, reply: Message, ledger: PrivacyLedger, site_sampling: str) -> list[Charge]:
    """The charges a reply would incur, from its DP report (the ``"site"`` record; the message's ``"site-dp"``).

    The computation is :func:`privacy.ledger.charges.round_charges`, the very one the coordinator's
    ledger runs; only the steps already charged come from this site's own ledger.
    """
    report = _report_of(reply)
    return _charges_after(msg, report, ledger.charges(report.site, report.manifest), site_sampling)


def _report_of(reply: Message) -> DPReport:
    report = DPReport.from_fields(required_config(reply.content, SITE_RECORD))
    if report is None:
        raise ConfigurationError("the reply names no site and manifest, so its privacy cannot be charged")
    return report


def _charges_after(msg: Message, report: DPReport, charged: list[Charge], site_sampling: str) -> list[Charge]:
    """:func:`site_charges` given the charges already on the reply's site and manifest (``charged``)."""
    run_id, rnd = str(msg.metadata.run_id), _round_of(msg)
    # A second train message for a round (the coordinator's retry of a rejected aggregate) is a second
    # release: charged under −round, as the coordinator does (coordinator.strategies.aggregate_guard).
    if any(c.run_id == run_id and c.round == rnd for c in charged):
        rnd = -rnd
    before = sum(c.steps for c in charged if c.kind == "record" and c.run_id == run_id)
    instructions = config_record(msg.content, CONFIG_KEY)
    return round_charges(report, run_id=run_id, server_round=rnd, record_steps_before=before,
                         site_sampling=site_sampling,
                         planned_rounds=planned_rounds(instructions) if instructions is not None else 0)


def make_ledger_mod(open_ledger: Callable[[Context, str], PrivacyLedger] = default_site_ledger,
                    *, site_sampling: str = "declared") -> Mod:
    """A client mod that charges each reply to the site's own ledger, or vetoes it.

    Place it outside :func:`privacy.site_dp.site_dp_mod` (it reads the
    site-level parameters that mod adds to the reply's ``"site"`` record) and
    inside any secure-aggregation mod:
    ``mods=[secure_mod, ledger_mod, site_dp_mod]``. It adds
    ``ledger-epsilon-record`` / ``ledger-epsilon-site`` (ε composed over all
    runs on this manifest) to the ``"site"`` record.
    """
    if site_sampling not in SITE_SAMPLING or site_sampling == "aggregated":
        raise ConfigurationError(f"site_sampling must be 'declared' or 'participation', got '{site_sampling}'")

    def ledger_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        site = config_record(reply.content, SITE_RECORD)
        try:
            report = DPReport.from_fields(site) if site is not None else None
            if site is None or report is None:
                if config_record(msg.content, CONFIG_KEY) is not None:
                    return _veto(msg, "the reply names no site and manifest, so its privacy cannot be charged",
                                 "site record missing")
                return reply
            ledger = open_ledger(context, report.site)
            spent = ledger.record_reply(  # the read of earlier charges and the new ones: one transaction
                report.site, report.manifest, lambda charged: _charges_after(msg, report, charged, site_sampling),
                actor=f"site:{report.site}", enforce=True)
            for kind in ("record", "site"):
                if kind in spent:
                    site[f"{LEDGER_EPSILON}{kind}"] = spent[kind]
        except PrivacyBudgetExceeded as exc:
            return _veto(msg, f"site privacy budget: {exc}", BUDGET_VETO)
        except FedguardError as exc:
            return _veto(msg, f"site privacy ledger: {exc}", LEDGER_FAILED)
        return reply

    return ledger_mod


BUDGET_VETO = "the site refused the round: its local privacy budget would be exceeded"
"""The public reason of a budget veto (the site's log has the numbers)."""
LEDGER_FAILED = "the site refused the round: its privacy ledger failed"
"""The public reason of a veto because the site's ledger could not record the charge."""


def _veto(msg: Message, detail: str, public: str) -> Message:
    """An error reply (nothing released): ``public`` goes to the coordinator, ``detail`` to the site's log."""
    logger.error("site vetoed the round; nothing was sent: %s", detail)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=public), reply_to=msg)


ledger_mod: Mod = make_ledger_mod()
"""The default site veto mod (declared sampling, ledger from the node config)."""
