"""The typed wire protocol: round trips, errors that name the key, one default, one DP charge."""

from __future__ import annotations

import tempfile
from dataclasses import fields
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.config import DEFAULTS, CoordinatorConfig
from coordinator.ledger import RunLedger
from federation import defaults
from federation.protocol import (
    REFUSAL_CODES,
    IdentityReply,
    ProtocolError,
    SiteRefusal,
    SiteReply,
    TrainConfig,
    bom_dp,
    identity_query,
)
from lifecycle.architecture import ModelSpec
from lifecycle.errors import FedguardError
from privacy.ledger import SiteLedger
from privacy.ledger.charges import RecordLevelReport, ReportError
from privacy.ledger.guard import site_charges
from simulations.federation import SimulationConfig
from tests.privacy.ledger.flwr_helpers import train_message

M = "e" * 64
CONFIG = TrainConfig(server_round=3, total_rounds=5, local_epochs=2, batch_size=16, lr=0.05, dp_epsilon=2.5,
                     dp_delta=1e-6, max_grad_norm=0.8, features=("a", "b"), target="y",
                     spec=ModelSpec(2, 3, (8, 4)), seed=7, data_dir="/data", labels=("x", "y", "z"), device="auto")


def test_train_config_round_trips() -> None:
    assert TrainConfig.from_record(CONFIG.to_record()) == CONFIG
    record = CONFIG.to_record()
    assert record["dp-epsilon"] == 2.5 and record["hidden"] == [8, 4] and record["num-classes"] == 3
    assert identity_query(record)["server-round"] == 0


@pytest.mark.parametrize(("key", "value"), [("lr", "fast"), ("local-epochs", 1.5), ("features", ["a", 2]),
                                            ("dp-epsilon", True), ("hidden", "32"), ("seed", None)])
def test_a_mistyped_value_is_refused_naming_its_key(key: str, value: object) -> None:
    record: dict[str, object] = {**CONFIG.to_record(), key: value}  # Flower's own checks would stop some
    with pytest.raises(ProtocolError, match=f"'{key}'") as caught:
        TrainConfig.from_record(record)
    assert isinstance(caught.value, FedguardError)


def test_a_missing_key_is_refused_naming_it() -> None:
    record = CONFIG.to_record()
    del record["target"]
    with pytest.raises(ProtocolError, match="lacks 'target'; coordinator and site versions differ"):
        TrainConfig.from_record(record)


def test_site_reply_round_trips_and_keeps_the_lineage_keys() -> None:
    reply = SiteReply("site-0", M, True, "cpu", epsilon=1.25, max_grad_norm=1.0, clipping="fused",
                      dp=RecordLevelReport(1.1, 0.05, 40, 1e-5, "rdp"), site_dp={"noise-std": 0.3},
                      ledger_epsilon={"record": 1.3})
    record = reply.to_record()
    assert SiteReply.from_record(record) == reply
    assert record["site-dp-noise-std"] == 0.3 and record["ledger-epsilon-record"] == 1.3
    assert reply.lineage_dp() == {"epsilon": 1.25, "delta": 1e-5, "noise-multiplier": 1.1, "sample-rate": 0.05,
                                  "steps": 40, "max-grad-norm": 1.0, "accountant": "rdp", "clipping": "fused"}
    assert bom_dp(reply.lineage_dp())["noise_multiplier"] == 1.1
    plain = SiteReply("site-1", M)
    assert SiteReply.from_record(plain.to_record()) == plain and plain.lineage_dp() == {}


def test_site_reply_errors_name_the_key() -> None:
    with pytest.raises(ProtocolError, match="'manifest'"):
        SiteReply.from_record(ConfigRecord({"name": "site-0"}))
    with pytest.raises(ReportError, match="'steps'"):
        SiteReply.from_record(ConfigRecord({"name": "site-0", "manifest": M, "noise-multiplier": 1.0,
                                            "sample-rate": 0.1, "steps": "many", "delta": 1e-5}))


def test_identity_reply_round_trips_with_the_per_round_cost() -> None:
    reply = IdentityReply("site-0", M, 120, RecordLevelReport(1.2, 0.1, 20, 1e-5, "prv"))
    record = reply.to_record()
    assert record["steps-per-round"] == 20 and "steps" not in record
    assert IdentityReply.from_record(record) == reply
    assert IdentityReply.from_record(IdentityReply("site-0", M, 3).to_record()).plan is None


def test_identity_reply_carries_the_sites_policy() -> None:
    reply = IdentityReply("site-0", M, 3, None, require_protection=True, epsilon_cap=2.5)
    record = reply.to_record()
    assert record["require-protection"] is True and record["epsilon-cap"] == 2.5
    assert IdentityReply.from_record(record) == reply
    older = IdentityReply.from_record(IdentityReply("site-0", M, 3).to_record())  # a site that does not say
    assert (older.require_protection, older.epsilon_cap) == (None, None)
    with pytest.raises(ProtocolError, match="require-protection"):
        IdentityReply.from_record(ConfigRecord({"name": "s", "manifest": M, "require-protection": "yes"}))


@given(st.sampled_from(sorted(REFUSAL_CODES)), st.text(max_size=400))
@settings(max_examples=60, deadline=None)
def test_a_refusal_round_trips_through_an_error_reason_as_one_line(code: str, text: str) -> None:
    refusal = SiteRefusal(code, text)
    assert "\n" not in refusal.message and 0 < len(refusal.message) <= 240
    assert SiteRefusal.parse(refusal.reason()) == refusal
    assert SiteRefusal.parse(refusal.to_error(2).reason) == refusal


def test_only_a_fedguard_refusal_is_decoded() -> None:
    assert SiteRefusal.parse("<class 'ValueError'>:<'could not convert 42.7'>") is None
    assert SiteRefusal.parse("fedguard-refusal/1 no-such-code: x") is None
    assert SiteRefusal.parse(None) is None
    with pytest.raises(ProtocolError, match="unknown site refusal code"):
        SiteRefusal("whatever", "x")


def test_every_default_has_one_source() -> None:
    sim = {f.name: f.default for f in fields(SimulationConfig)}
    for key, value in (("dp-epsilon", defaults.DEFAULT_DP_EPSILON), ("dp-delta", defaults.DEFAULT_DP_DELTA),
                       ("max-grad-norm", defaults.DEFAULT_MAX_GRAD_NORM),
                       ("local-epochs", defaults.DEFAULT_LOCAL_EPOCHS),
                       ("batch-size", defaults.DEFAULT_BATCH_SIZE), ("lr", defaults.DEFAULT_LR),
                       ("seed", defaults.DEFAULT_SEED), ("hidden", defaults.DEFAULT_HIDDEN),
                       ("clip-norm", defaults.DEFAULT_CLIP_NORM)):
        assert DEFAULTS[key] == sim[key.replace("-", "_")] == value, key
    assert DEFAULTS["site-device"] == defaults.DEFAULT_DEVICE
    assert CoordinatorConfig.from_mapping({}).dp_epsilon == defaults.DEFAULT_DP_EPSILON


@settings(max_examples=25, deadline=None)
@given(sigma=st.floats(0.3, 5.0), q=st.floats(0.01, 1.0), per_round=st.integers(1, 50), rounds=st.integers(1, 4))
def test_the_site_veto_and_the_coordinator_charge_the_same(sigma: float, q: float, per_round: int,
                                                           rounds: int) -> None:
    """One function: for the same replies, the site's veto and the coordinator's ledger record equal charges."""
    with tempfile.TemporaryDirectory() as folder:
        _charge_both_sides(Path(folder), sigma, q, per_round, rounds)


def _charge_both_sides(folder: Path, sigma: float, q: float, per_round: int, rounds: int) -> None:
    site_ledger, coordinator = SiteLedger.open(folder / "site.db"), SiteLedger.open(folder / "coordinator.db")
    run = RunLedger(coordinator, "7")  # the run id the site sees in the message metadata
    for rnd in range(1, rounds + 1):
        site = SiteReply("site-0", M, dp=RecordLevelReport(sigma, q, per_round * rnd, 1e-5)).to_record()
        msg = train_message({"config": ConfigRecord({"server-round": rnd})}, server_round=rnd)
        reply = Message(RecordDict({"site": site}), reply_to=msg)
        for charge in site_charges(msg, reply, site_ledger, "declared"):
            site_ledger.record(charge, actor="site", enforce=False)
        run.record_round(rnd, [reply])
    assert site_ledger.charges() and [c.same_mechanism(d) for c, d in
                                      zip(site_ledger.charges(), coordinator.charges(), strict=True)] == [True] * rounds
