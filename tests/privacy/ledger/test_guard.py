"""The site's veto mod: charges its own ledger before the reply leaves, refuses over cap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.client.mod.utils import make_ffn

from lifecycle.errors import ConfigurationError
from privacy.accountants import GaussianHistory
from privacy.ledger import PrivacyLedger, SiteLedger
from privacy.ledger.guard import default_site_ledger, make_ledger_mod
from privacy.site_dp import SiteDPConfig, SiteDPPlan, make_site_dp_mod
from tests.privacy.ledger.flwr_helpers import arrays, context, train_message

M = "d" * 64
GLOBAL = {"w": np.zeros((3, 2), np.float32)}


def record_app(steps_per_round: int):  # type: ignore[no-untyped-def]
    """A ClientApp reporting record-level DP-SGD as client/app.py does (cumulative steps in node state)."""
    def app(msg: Message, ctx: Context) -> Message:
        done = int(ctx.state.config_records["t"]["steps"]) if "t" in ctx.state.config_records else 0
        steps = done + steps_per_round
        ctx.state["t"] = ConfigRecord({"steps": steps})
        site = ConfigRecord({"name": "site-0", "manifest": M, "noise-multiplier": 1.1, "sample-rate": 0.05,
                             "steps": steps, "delta": 1e-5, "accountant": "rdp"})
        return Message(content=RecordDict({"arrays": arrays({"w": GLOBAL["w"] + 0.1}), "site": site}),
                       reply_to=msg)
    return app


def opener(ledger: PrivacyLedger):  # type: ignore[no-untyped-def]
    return lambda ctx, site: ledger


def test_record_level_rounds_are_charged_then_vetoed(tmp_path: Path) -> None:
    ledger = SiteLedger.open(tmp_path / "l.db")
    ledger.set_cap("site-0", 3.0, 1e-5)
    app, ctx = make_ffn(record_app(20), [make_ledger_mod(opener(ledger))]), context()
    results = [app(train_message({"arrays": arrays(GLOBAL)}, server_round=r), ctx) for r in range(1, 12)]
    ok = [r for r in results if not r.has_error()]
    assert 1 < len(ok) < len(results)
    assert [c.steps for c in ledger.charges()] == [20] * len(ok)  # per-round steps, not cumulative
    assert ledger.spent("site-0", M, "record") <= 3.0
    assert ok[-1].content.config_records["site"]["ledger-epsilon-record"] == pytest.approx(
        GaussianHistory(1.1, 0.05, 20 * len(ok), 1e-5).epsilon())
    refused = results[len(ok)]
    assert refused.has_error() and "privacy budget" in refused.error.reason
    assert "arrays" not in refused.content.array_records if refused.has_content() else True


def _site_dp_round(mods: list, server_round: int, plan: SiteDPPlan) -> Message:  # type: ignore[type-arg]
    def app(msg: Message, ctx: Context) -> Message:
        return Message(content=RecordDict({"arrays": arrays({"w": GLOBAL["w"] + 0.1}),
                                           "site": ConfigRecord({"name": "site-0", "manifest": M})}),
                       reply_to=msg)
    msg = train_message({"arrays": arrays(GLOBAL), "site-dp": plan.to_record()}, server_round=server_round)
    return make_ffn(app, mods)(msg, context())


PLAN = SiteDPPlan(SiteDPConfig(2.0, 1e-5, 1.0, rounds=10, sites_per_round=2, total_sites=10, min_sites=2),
                  noise_multiplier=1.5)


def test_site_level_declared_charges_the_planned_run_once(tmp_path: Path) -> None:
    ledger = SiteLedger.open(tmp_path / "l.db")
    mods = [make_ledger_mod(opener(ledger)), make_site_dp_mod(lambda: np.random.default_rng(0))]
    for rnd in (1, 2, 5):
        assert not _site_dp_round(mods, rnd, PLAN).has_error()
    (charge,) = ledger.charges()
    assert (charge.kind, charge.steps, charge.sample_rate, charge.round) == ("site", 10, 0.2, 0)


def test_site_level_participation_mode_vetoes_early(tmp_path: Path) -> None:
    ledger = SiteLedger.open(tmp_path / "l.db")
    ledger.set_cap("site-0", 4.0, 1e-5, kind="site")
    mods = [make_ledger_mod(opener(ledger), site_sampling="participation"),
            make_site_dp_mod(lambda: np.random.default_rng(0))]
    results = [_site_dp_round(mods, rnd, PLAN) for rnd in range(1, 8)]
    assert results[0].has_error() is False and any(r.has_error() for r in results)
    assert all(c.sample_rate == 1.0 and c.steps == 1 for c in ledger.charges())
    assert ledger.spent("site-0", M, "site") <= 4.0
    with pytest.raises(ConfigurationError):
        make_ledger_mod(site_sampling="trust-me")


def test_default_site_ledger_from_node_config(tmp_path: Path) -> None:
    ctx = context({"privacy-ledger": str(tmp_path / "n.db"), "epsilon-cap": 2.5, "site-epsilon-cap": 1.0})
    ledger = default_site_ledger(ctx, "site-0")
    assert default_site_ledger(ctx, "site-0") is ledger  # opened once per process
    assert ledger.cap_for("site-0", M, "record").epsilon == 2.5  # type: ignore[union-attr]
    assert ledger.cap_for("site-0", M, "site").epsilon == 1.0  # type: ignore[union-attr]
    assert (tmp_path / "n.db").exists()


def test_a_ledger_at_its_former_default_place_is_kept(fedguard_home: Path) -> None:
    """A site whose ledger is at site-ledgers/<site>.db (the default before site/<site>/) keeps its spend."""
    from lifecycle.home import SiteHome
    from privacy.ledger.guard import _LEDGERS

    legacy = fedguard_home / "site-ledgers" / "site-9.db"
    legacy.parent.mkdir(parents=True)
    SiteLedger.open(legacy).close()
    ledger = default_site_ledger(context({}), "site-9")
    try:
        assert _LEDGERS[str(legacy)] is ledger and not SiteHome.under(fedguard_home, "site-9").ledger.exists()
    finally:
        _LEDGERS.pop(str(legacy)).close()
