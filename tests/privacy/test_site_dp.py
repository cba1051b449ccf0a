"""Site-level DP: calibration, distributed noise, and the client mod on Flower messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod.utils import make_ffn
from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycle.errors import ConfigurationError
from privacy.accountants import GaussianHistory
from privacy.site_dp import (
    SiteDPConfig,
    SiteDPError,
    SiteDPPlan,
    add_site_noise,
    calibrate_site_noise,
    make_site_dp_mod,
    require_min_contributions,
    site_dp_mod,
    site_noise_std,
)
from privacy.updates import flatten, model_delta
from tests.privacy.ledger.flwr_helpers import arrays, context, train_message

CONFIG = SiteDPConfig(target_epsilon=3.0, delta=1e-5, clip_norm=0.5, rounds=20, sites_per_round=5,
                      total_sites=50, min_sites=4)
GLOBAL = {"0.mean": np.zeros(3, np.float32), "w": np.zeros((4, 3), np.float32), "b": np.zeros(4, np.float32)}


def _plan() -> SiteDPPlan:
    return SiteDPPlan(CONFIG, noise_multiplier=1.2)


def _app(local: dict[str, np.ndarray], site: bool = True):  # type: ignore[no-untyped-def]
    def app(msg: Message, ctx: Context) -> Message:
        content = RecordDict({"arrays": arrays(local), "metrics": MetricRecord({"num-examples": 10})})
        if site:
            content["site"] = ConfigRecord({"name": "site-0", "manifest": "ab" * 32})
        return Message(content=content, reply_to=msg)
    return app


def _message(record: ConfigRecord | None) -> Message:
    records: dict[str, object] = {"arrays": arrays(GLOBAL)}
    if record is not None:
        records["site-dp"] = record
    return train_message(records)


def test_config_sample_rate_and_validation() -> None:
    assert CONFIG.sample_rate == pytest.approx(0.1)
    with pytest.raises(ConfigurationError, match="min sites"):
        SiteDPConfig(3.0, 1e-5, 1.0, 10, sites_per_round=3, total_sites=10, min_sites=4)
    with pytest.raises(ConfigurationError, match="clip norm"):
        SiteDPConfig(3.0, 1e-5, 0.0, 10, 3, 10, 2)


@settings(max_examples=4, deadline=None)
@given(eps=st.floats(0.5, 8.0), rounds=st.integers(1, 40), per_round=st.integers(2, 10))
def test_calibrated_site_noise_never_overshoots(eps: float, rounds: int, per_round: int) -> None:
    config = SiteDPConfig(eps, 1e-5, 1.0, rounds, per_round, 10, 1)
    sigma = calibrate_site_noise(config)
    spent = GaussianHistory(sigma, config.sample_rate, rounds, 1e-5).epsilon()
    assert eps * 0.9 <= spent <= eps * 1.0001


def test_plan_series_and_record() -> None:
    plan = SiteDPPlan.calibrate(CONFIG)
    series = plan.epsilon_series()
    assert len(series) == CONFIG.rounds and series[-1] <= CONFIG.target_epsilon * 1.0001
    assert series[-1] == pytest.approx(plan.history(CONFIG.rounds).epsilon())
    record = plan.to_record(frozen_keys=["0.mean"])
    assert record["noise-std"] == pytest.approx(plan.noise_multiplier * 0.5 / 2)
    assert record["frozen-keys"] == ["0.mean"] and record["rounds"] == 20


def test_distributed_shares_sum_to_at_least_sigma_c() -> None:
    """n_min shares of N(0, (σC)²/n_min) sum to N(0, (σC)²): the central DP-FedAvg noise."""
    sigma, clip_norm, n_min = 1.3, 0.7, 5
    std = site_noise_std(sigma, clip_norm, n_min)
    assert std == pytest.approx(sigma * clip_norm / math.sqrt(n_min))
    rng = np.random.default_rng(0)
    total = sum(add_site_noise(np.zeros(200_000), std, rng) for _ in range(n_min))
    assert float(np.std(total)) == pytest.approx(sigma * clip_norm, rel=0.01)
    with pytest.raises(SiteDPError, match="at least 5"):
        require_min_contributions(4, n_min)
    require_min_contributions(5, n_min)


def test_mod_clips_to_c_keeps_layout_and_freezes_buffers() -> None:
    record = _plan().to_record(frozen_keys=["0.mean"])
    record["noise-std"], record["noise-multiplier"] = 0.0, 0.0  # isolate clipping
    local = {"0.mean": np.full(3, 9.0, np.float32), "w": np.full((4, 3), 2.0, np.float32),
             "b": np.ones(4, np.float32)}
    msg = _message(record)
    reply = site_dp_mod(msg, context(), _app(local))
    out = reply.content.array_records["arrays"]
    assert list(out.keys()) == list(GLOBAL) and all(out[k].numpy().shape == GLOBAL[k].shape for k in GLOBAL)
    assert out["w"].numpy().dtype == np.float32
    np.testing.assert_array_equal(out["0.mean"].numpy(), GLOBAL["0.mean"])  # frozen: never sent changed
    delta = model_delta(out, msg.content.array_records["arrays"])
    assert float(np.linalg.norm(delta)) == pytest.approx(0.5, rel=1e-5)
    raw = np.concatenate([np.full(12, 2.0), np.ones(4)])
    np.testing.assert_allclose(delta[3:] / np.linalg.norm(delta), raw / np.linalg.norm(raw), rtol=1e-5)


def test_mod_adds_injected_noise_and_reports_parameters() -> None:
    plan = _plan()
    local = {k: v + 0.01 for k, v in GLOBAL.items()}
    mod = make_site_dp_mod(lambda: np.random.default_rng(42))
    replies = [mod(_message(plan.to_record()), context(), _app(local)) for _ in range(2)]
    a, b = (flatten(r.content.array_records["arrays"])[0] for r in replies)
    np.testing.assert_array_equal(a, b)  # same injected generator, same noise
    assert float(np.std(a)) > plan.noise_std * 0.5
    site = replies[0].content.config_records["site"]
    assert site["site-dp-noise-std"] == pytest.approx(plan.noise_std)
    assert site["site-dp-noise-multiplier"] == pytest.approx(1.2) and site["site-dp-min-sites"] == 4
    fresh = [flatten(site_dp_mod(_message(plan.to_record()), context(), _app(local))
                     .content.array_records["arrays"])[0] for _ in range(2)]
    assert not np.array_equal(*fresh)  # default: a fresh CSPRNG seed per message


def test_mod_refuses_to_under_noise_and_passes_other_messages() -> None:
    record = _plan().to_record()
    record["noise-std"] = 0.01
    reply = site_dp_mod(_message(record), context(), _app(GLOBAL))
    assert reply.has_error() and "refuses to under-noise" in reply.error.reason
    plain = site_dp_mod(_message(None), context(), _app({k: v + 1 for k, v in GLOBAL.items()}))
    assert not plain.has_error()
    assert flatten(plain.content.array_records["arrays"])[0].max() == 1.0  # untouched
    evaluate = train_message({"arrays": arrays(GLOBAL), "site-dp": _plan().to_record()}, message_type="evaluate")
    assert not site_dp_mod(evaluate, context(), _app(GLOBAL)).has_error()


def test_mod_refuses_mismatched_update() -> None:
    reply = site_dp_mod(_message(_plan().to_record()), context(), _app({"w": np.zeros((4, 3), np.float32)}))
    assert reply.has_error() and "names and shapes" in reply.error.reason


def test_secure_mod_outside_sees_the_noised_clipped_update() -> None:
    """mods=[secure_mod, site_dp_mod]: on the reply path the secure mod gets what site_dp_mod produced."""
    seen: dict[str, np.ndarray] = {}

    def fake_secure_mod(msg: Message, ctx: Context, call_next):  # type: ignore[no-untyped-def]
        reply = call_next(msg, ctx)
        seen["delta"] = model_delta(reply.content.array_records["arrays"], msg.content.array_records["arrays"])
        return reply

    record = _plan().to_record(frozen_keys=["0.mean"])
    record["noise-std"], record["noise-multiplier"] = 0.0, 0.0
    app = make_ffn(_app({k: v + 5 for k, v in GLOBAL.items()}), [fake_secure_mod, site_dp_mod])
    app(_message(record), context())
    assert float(np.linalg.norm(seen["delta"])) == pytest.approx(0.5, rel=1e-5)


def test_noised_bounds_hold_for_real_noise() -> None:
    from privacy.site_dp import noised_coordinate_bound, noised_norm_bound

    rng = np.random.default_rng(1)
    clipped = np.full(10_000, 0.01)  # norm 1.0
    noised = add_site_noise(clipped, 0.3, rng)
    assert np.linalg.norm(noised) <= noised_norm_bound(1.0, 0.3, 10_000)
    assert np.abs(noised).max() <= noised_coordinate_bound(1.0, 0.3)
