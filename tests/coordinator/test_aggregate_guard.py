"""The aggregate guard (issue 12, point 3): a site that cheats under secure aggregation is caught on the sum.

Three kinds of evidence: the bound arithmetic on known answers; a property
test over seeds that honest clipped (and noised, and quantized) sites are
never rejected; and the guard in the full strategy stack against cheating
sites, in-process (no Ray) and in two small Flower simulations.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlmodel import select

from client.protection import make_protection_mod
from coordinator.config import CoordinatorConfig
from coordinator.ledger import RunLedger
from coordinator.strategies.aggregate_bounds import AggregateBounds, Violation
from coordinator.strategies.aggregate_guard import ROUND_REJECTED, AggregateRejectedError, GuardEvent, audit_guard
from coordinator.strategies.builder import StrategyStack, build_strategy
from lifecycle.errors import ConfigurationError
from lifecycle.registry import Registry
from lifecycle.registry.tables import AuditEvent
from privacy.ledger import coordinator_ledger
from privacy.secagg.config import SecAggConfig
from privacy.secagg.messages import NEXT_RECORD_KEY, RECORD_KEY, UNMASK, header_of
from privacy.secagg.quantization import dequantize, quantize
from privacy.updates import apply_payload_sum, clip, clipped_payload, flatten
from tests.coordinator.cheating import make_cheating_mod
from tests.privacy.secagg.harness import LocalGrid

# ------------------------------------------------------------------ the arithmetic


def test_an_aggregate_exactly_at_the_honest_bound_passes_and_one_percent_more_does_not() -> None:
    bounds = AggregateBounds(clip_norm=2.0, max_weight=10.0)
    start = np.zeros(4)
    at_bound = np.array([2.0, 0, 0, 0])  # Σ wΔ = W·C along one axis: every site at ‖Δ‖ = C, aligned
    assert bounds.check(start, at_bound, total_weight=25.0, sites=3) is None
    violation = bounds.check(start, at_bound * 1.01, total_weight=25.0, sites=3)
    assert violation is not None and violation.bound == "l2-norm"
    assert violation.limit == pytest.approx(25.0 * 2.0) and violation.measured == pytest.approx(50.5)


def test_the_total_weight_and_finiteness_are_checked_first() -> None:
    bounds = AggregateBounds(clip_norm=1.0, max_weight=10.0)
    start = np.zeros(3)
    over = bounds.check(start, start, total_weight=30.5, sites=3)
    assert over is not None and over.bound == "total-weight" and over.limit == pytest.approx(30.0)
    assert bounds.check(start, start, total_weight=30.0, sites=3) is None
    assert bounds.check(start, start, total_weight=0.0, sites=3) is not None
    nan = bounds.check(start, np.array([0.0, math.nan, 0.0]), total_weight=3.0, sites=3)
    assert nan is not None and nan.bound == "finite"


def test_noise_bounds_known_answers_and_a_spike_that_only_the_coordinate_bound_sees() -> None:
    bounds = AggregateBounds(clip_norm=1.0, max_weight=1.0, noise_std=1.0, noise_dim=10_000)
    assert bounds.noise_norm(4) == pytest.approx(2 * (100 + 10))  # √n·std·(√d + t)
    assert bounds.noise_coordinate(4) == pytest.approx(2 * math.sqrt(100 + 2 * math.log(20_000)))
    start = np.zeros(10_000)
    spike = start.copy()
    spike[7] = 100.0 / 4  # Σ = 100 in one coordinate: inside the L2 allowance 4 + 220, far over 4 + 21.9
    violation = bounds.check(start, spike, total_weight=4.0, sites=4)
    assert violation is not None and violation.bound == "coordinate"
    assert violation.limit == pytest.approx(4 + bounds.noise_coordinate(4))
    assert "largest coordinate" in violation.describe()


def test_invalid_bounds_are_refused() -> None:
    for kwargs in ({"clip_norm": 0.0, "max_weight": 1.0}, {"clip_norm": 1.0, "max_weight": math.nan},
                   {"clip_norm": 1.0, "max_weight": 1.0, "noise_std": -1.0}):
        with pytest.raises(ConfigurationError):
            AggregateBounds(**kwargs)  # type: ignore[arg-type]


def test_the_run_config_keys_are_validated() -> None:
    base = {"data-dir": "x"}
    cfg = CoordinatorConfig.from_mapping(base)
    assert (cfg.max_rejected_rounds, cfg.max_accuracy_drop) == (2, 0.1)
    for key, value in (("max-rejected-rounds", 0), ("max-accuracy-drop", 1.5), ("max-accuracy-drop", "nan")):
        with pytest.raises(ConfigurationError, match=key):
            CoordinatorConfig.from_mapping(base, {key: value})


# ------------------------------------------------------------------ honest sites: never rejected


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), sites=st.integers(3, 8), dim=st.integers(2, 300),
       aligned=st.booleans(), site_dp=st.booleans())
def test_honest_clipped_noised_quantized_sums_are_never_rejected(
    seed: int, sites: int, dim: int, aligned: bool, site_dp: bool
) -> None:
    """Every site clips (and under site-level DP adds its noise share) as its mods do; the sum goes through
    SecAgg+'s fixed point and float32 storage. Aligned updates at exactly C are the worst honest case."""
    rng = np.random.default_rng(seed)
    clip_norm = 1.0 if site_dp else float(rng.uniform(0.05, 20.0))
    max_weight = 1.0 if site_dp else float(rng.integers(1, 2000))
    std = float(rng.uniform(0.01, 3.0)) if site_dp else 0.0
    protection = clip_norm + std * (math.sqrt(dim) + 10) if site_dp else clip_norm
    config = SecAggConfig.recommended(sites, protection, max_weight, weighting="uniform" if site_dp else "examples")
    global_ = ArrayRecord({"w": Array(rng.normal(scale=rng.uniform(0.01, 10.0), size=dim).astype(np.float32))})
    base, _ = flatten(global_)
    direction = rng.normal(size=dim)
    total = np.zeros(dim + 1, dtype=np.uint32)
    for _ in range(sites):
        delta = direction if aligned else rng.normal(size=dim)
        delta = delta / np.linalg.norm(delta) * clip_norm * (1.0 if aligned else rng.uniform(0.0, 1.0))
        if site_dp:
            delta, _ = clip(delta, clip_norm)
            delta = delta + rng.normal(scale=std, size=dim)
        local = ArrayRecord({"w": Array((base + delta).astype(np.float32))})
        weight = 1.0 if site_dp else float(rng.integers(1, int(max_weight) + 1))
        payload, _ = clipped_payload(local, global_, protection, weight)
        total += quantize(payload, config.effective_scale, config.bound)
    new_global, weight = apply_payload_sum(dequantize(total, config.effective_scale), global_)
    bounds = AggregateBounds(clip_norm, max_weight, noise_std=std, noise_dim=dim,
                             resolution=0.5 / config.effective_scale)
    assert bounds.check(base, flatten(new_global)[0], weight, sites) is None


# ------------------------------------------------------------------ the guard in the stack, in-process

SHAPES = {"w": (20, 12), "b": (12,)}
TARGET = {k: np.full(s, 0.5, dtype=np.float32) for k, s in SHAPES.items()}


def _initial() -> ArrayRecord:
    return ArrayRecord({k: Array(np.zeros(s, dtype=np.float32)) for k, s in SHAPES.items()})


def _site_app(*mods: Any) -> ClientApp:
    """Sites step 30% of the way to TARGET (plus a little seeded noise), reporting a record-level DP cost."""
    app = ClientApp(mods=list(mods))

    @app.train(mods=[make_protection_mod(require_protection=False)])
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content.array_records["arrays"]
        round_ = int(msg.content.config_records["config"]["server-round"])  # type: ignore[arg-type]
        rng = np.random.default_rng(context.node_id % 2**32 + 7919 * round_)
        new = {k: (arrays[k].numpy() + 0.3 * (TARGET[k] - arrays[k].numpy())
                   + rng.normal(scale=0.01, size=SHAPES[k])).astype(np.float32) for k in SHAPES}
        trained = int(context.state["steps"]["n"]) + 10 if "steps" in context.state else 10  # type: ignore[arg-type]
        context.state["steps"] = MetricRecord({"n": trained})
        site = ConfigRecord({"name": f"site-{context.node_config['partition-id']}", "manifest": "ab" * 32,
                             "noise-multiplier": 1.0, "sample-rate": 0.1, "steps": trained, "delta": 1e-5})
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in new.items()}),
                                   "metrics": MetricRecord({"num-examples": 20}), "site": site}), reply_to=msg)

    return app


def _accuracy(arrays: ArrayRecord) -> float:
    """A stand-in for held-out accuracy: the share of weights within 0.4 of TARGET."""
    close = [np.abs(arrays[k].numpy() - TARGET[k]) < 0.4 for k in SHAPES]
    return float(np.concatenate([c.ravel() for c in close]).mean())


def _stack(registry: Registry, events: list[GuardEvent], **config: Any) -> tuple[StrategyStack, RunLedger]:
    cfg = CoordinatorConfig.from_mapping({"num-sites": 3, "watermark": "none", **config})
    ledger = RunLedger(coordinator_ledger(registry), "run-1")

    def on_guard(event: GuardEvent) -> None:
        events.append(event)
        audit_guard(registry, "run-1")(event)

    stack = build_strategy(cfg, on_round=lambda report: None, num_params=sum(math.prod(s) for s in SHAPES.values()),
                           run_ledger=ledger, accuracy=_accuracy, on_guard=on_guard)
    return stack, ledger


def _start(stack: StrategyStack, grid: LocalGrid, rounds: int) -> Result:
    return stack.outer.start(grid=cast(Grid, grid), initial_arrays=_initial(), num_rounds=rounds, timeout=10)


def _audited(registry: Registry) -> list[dict[str, Any]]:
    with registry.transaction() as session:
        rows = session.exec(select(AuditEvent).where(AuditEvent.action == ROUND_REJECTED)).all()
        return [json.loads(row.details_json) for row in rows]


def test_a_site_scaling_by_1000_is_rejected_retried_skipped_and_stops_the_run(registry: Registry) -> None:
    events: list[GuardEvent] = []
    stack, ledger = _stack(registry, events)
    grid = LocalGrid(_site_app(make_cheating_mod(1000.0, site=0)), 3)
    with pytest.raises(AggregateRejectedError) as raised:
        _start(stack, grid, 3)
    message = str(raised.value)
    assert "rounds 1" not in message and "round 1: L2 norm" in message and "round 2: L2 norm" in message
    assert "max-rejected-rounds = 2" in message and "remove or re-enrol the suspect site" in message
    assert [(e.server_round, e.attempt, e.action) for e in events] == [
        (1, 1, "retry"), (1, 2, "skip"), (2, 1, "retry"), (2, 2, "stop")]
    assert all(e.violation.bound == "l2-norm" and e.violation.measured > 50 * e.violation.limit for e in events)
    assert [(d["round"], d["attempt"], d["bound"], d["action"]) for d in _audited(registry)] == [
        (1, 1, "l2-norm", "retry"), (1, 2, "l2-norm", "skip"), (2, 1, "l2-norm", "retry"), (2, 2, "l2-norm", "stop")]
    assert stack.tracked.rounds_aggregated == 0  # no model round: four rejected aggregates
    assert stack.tracked.sites["site-1"].rounds == 4  # …but four releases, kept for lineage and ε
    charged = sorted({c.round for c in ledger.ledger.charges("site-1")})
    assert charged == [-2, -1, 1, 2]  # each retry is charged apart from its round


@pytest.mark.parametrize("keys_ahead", [False, True])
def test_a_one_off_fault_is_repaired_by_the_retry_with_fresh_masks(registry: Registry, keys_ahead: bool) -> None:
    events: list[GuardEvent] = []
    stack, _ = _stack(registry, events, **{"secagg-keys-ahead": keys_ahead})
    grid = LocalGrid(_site_app(make_cheating_mod(1000.0, site=0, times=1)), 3)
    sessions: dict[str, list[bytes]] = {"setup": [], "masked-input": []}
    original = grid.send_and_receive

    def send(messages: Any, *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        for m in messages:
            for key in (RECORD_KEY, NEXT_RECORD_KEY):  # a next session's share-keys may ride on an unmask
                record = m.content.config_records.get(key)
                if record is not None and header_of(record).stage in sessions:
                    sessions[header_of(record).stage].append(header_of(record).round_id)
        return original(messages, timeout=timeout)

    grid.send_and_receive = send  # type: ignore[method-assign]
    result = _start(stack, grid, 1)
    assert [(e.server_round, e.attempt, e.action) for e in events] == [(1, 1, "retry")]
    assert len(set(sessions["masked-input"])) == 2  # a new SecAgg+ session: a fresh round id, keys and masks
    # with keys drawn ahead the retry opened its session with keys, not a setup (and not in the session the
    # rejected attempt's unmask opened for round 2: the sites accept a round-1 session after it)
    assert len(set(sessions["setup"])) == (1 if keys_ahead else 2)
    assert stack.tracked.rounds_aggregated == 1
    assert np.allclose(result.arrays["w"].numpy(), 0.15, atol=0.05)  # the honest step was applied


def test_a_retry_that_would_sum_other_sites_is_never_unmasked(registry: Registry) -> None:
    """Rejected sum over {0, 1, 2}; in the retry site 2 goes silent: {0, 1} would reveal Δ₂ by subtraction."""
    events: list[GuardEvent] = []
    stack, _ = _stack(registry, events, **{"max-rejected-rounds": 3})
    grid = LocalGrid(_site_app(make_cheating_mod(1000.0, site=0)), 3)
    silent = grid.get_node_ids()[2]
    masked_inputs: list[int] = []

    def silence(message: Message) -> bool:
        record = message.content.config_records.get(RECORD_KEY)
        if record is None or header_of(record).stage != "masked-input" or message.metadata.dst_node_id != silent:
            return False
        masked_inputs.append(silent)
        return len(masked_inputs) > 1

    grid.silence = silence
    result = _start(stack, grid, 1)
    unmasks = [r for r in grid.received if RECORD_KEY in r.content.config_records
               and header_of(r.content.config_records[RECORD_KEY]).stage == UNMASK]
    assert len(unmasks) == 3  # the first attempt's only: the retry stopped before its unmask stage
    assert [(e.attempt, e.violation.bound) for e in events] == [(1, "l2-norm"), (2, "retry-failed")]
    assert "nothing was unmasked" in events[1].violation.detail
    assert len(result.arrays) == 0 and stack.tracked.rounds_aggregated == 0  # nothing replaced the global model


def test_a_negated_update_inside_the_norm_bound_is_caught_by_held_out_accuracy(registry: Registry) -> None:
    events: list[GuardEvent] = []
    stack, _ = _stack(registry, events, **{"clip-norm": 100.0})  # loose enough that ×(−10) passes the bounds
    grid = LocalGrid(_site_app(make_cheating_mod(-10.0, site=0, rounds={2})), 3)
    result = _start(stack, grid, 3)
    assert [(e.server_round, e.violation.bound, e.action) for e in events] == [
        (2, "accuracy", "retry"), (2, "accuracy", "skip")]
    assert events[0].violation.measured > 0.5
    assert _accuracy(result.arrays) == 1.0 and stack.tracked.rounds_aggregated == 2


def test_honest_rounds_pass_and_the_guard_needs_no_retry(registry: Registry) -> None:
    events: list[GuardEvent] = []
    stack, _ = _stack(registry, events)
    result = _start(stack, LocalGrid(_site_app(), 3), 2)
    assert events == [] and stack.tracked.rounds_aggregated == 2 and _audited(registry) == []
    assert np.allclose(result.arrays["w"].numpy(), 0.5 - 0.5 * 0.7**2, atol=0.05)


def test_a_sites_own_ledger_charges_a_retried_round_apart(tmp_path: Path) -> None:
    """The retry re-sends round r's instruction: the site's veto mod charges it under −r (was: a conflict)."""
    from flwr.client.mod.utils import make_ffn

    from privacy.ledger import SiteLedger
    from privacy.ledger.guard import make_ledger_mod
    from tests.privacy.ledger.flwr_helpers import arrays, context, train_message
    from tests.privacy.ledger.test_guard import GLOBAL, record_app

    ledger = SiteLedger.open(tmp_path / "site.db")
    app, ctx = make_ffn(record_app(20), [make_ledger_mod(lambda c, s: ledger)]), context()
    for server_round in (1, 2, 2, 3, 3):
        assert not app(train_message({"arrays": arrays(GLOBAL)}, server_round=server_round), ctx).has_error()
    assert [(c.round, c.steps) for c in ledger.charges()] == [(1, 20), (2, 20), (-2, 20), (3, 20), (-3, 20)]


def test_violation_messages_name_the_bound() -> None:
    assert "held-out accuracy drop 0.3 > 0.1" in Violation("accuracy", 0.3, 0.1).describe()
    assert Violation("retry-failed", 0, 0, "boom").describe() == "the retry could not be aggregated: boom"


# ------------------------------------------------------------------ Flower simulations (Ray)


def _simulate(home: Path, tmp_path: Path, overrides: dict[str, Any], mods: list[Any], **sim: Any) -> dict[str, Any]:
    from client.app import make_client_app
    from coordinator.app import make_server_app
    from lifecycle.home import Home
    from simulations.federation import SimulationConfig, _engine_environment, prepare_data
    from tests.ray_cluster import run_simulation_on_test_ray

    cfg = SimulationConfig(sites=3, watermark="none", secure_agg="secagg+", **sim)
    prepared = prepare_data(cfg, tmp_path / "data")
    _engine_environment(Home(home).ensure())
    outcome: dict[str, Any] = {"baseline": prepared.baseline_accuracy}
    run_simulation_on_test_ray(
        home,
        server_app=make_server_app({**cfg.coordinator_overrides(prepared.data_dir, tmp_path / "out.json"),
                                    **overrides}, lambda event, payload: None, outcome),
        client_app=make_client_app(require_protection=not mods, mods=mods),
        num_supernodes=cfg.sites,
    )
    return outcome


@pytest.mark.integration
@pytest.mark.usefixtures("shared_ray")  # one Ray head per test process, not one per run
def test_simulated_sites_sending_minus_10_and_1000_times_their_update_are_never_applied(
    fedguard_home: Path, tmp_path: Path, registry: Registry
) -> None:
    """The demo of the issue: site 0 (the largest) sends ×(−10) in round 2 and ×1000 in round 3."""
    mods = [make_cheating_mod(-10.0, site=0, rounds={2}), make_cheating_mod(1000.0, site=0, rounds={3})]
    outcome = _simulate(fedguard_home, tmp_path, {"max-rejected-rounds": 3}, mods, rounds=4)
    assert "model" in outcome, "the run did not complete"
    skipped = [(e["server_round"], e["attempt"], e["violation"]["bound"], e["action"])
               for e in outcome["rejected_rounds"]]
    assert skipped == [(2, 1, "l2-norm", "retry"), (2, 2, "l2-norm", "skip"),
                       (3, 1, "l2-norm", "retry"), (3, 2, "l2-norm", "skip")]
    accuracy = [entry["accuracy"] for entry in outcome["history"]]
    assert accuracy[2] == accuracy[1] == accuracy[0]  # rounds 2 and 3 left the global model as it was
    assert outcome["accuracy"] > 0.9 and outcome["accuracy"] > outcome["baseline"] - 0.05
    assert len(_audited(registry)) == 4


@pytest.mark.integration
@pytest.mark.usefixtures("shared_ray")  # one Ray head per test process, not one per run
def test_an_honest_simulation_with_record_and_site_level_dp_is_never_rejected(
    fedguard_home: Path, tmp_path: Path, registry: Registry
) -> None:
    outcome = _simulate(fedguard_home, tmp_path, {}, [], rounds=3, dp_epsilon=3.0, site_epsilon=5.0)
    assert "model" in outcome and outcome["rejected_rounds"] == [] and _audited(registry) == []
    assert all(entry["sites"] == 3 for entry in outcome["history"])
