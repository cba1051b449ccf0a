"""Strategies (issue 15, point 3): the server optimisers' step, their place in the stack, and the run config.

The step is checked against Reddi et al.'s update written out here (with
Flower's bias correction), on toy vectors; in the full strategy stack
(SecAgg+, the aggregate guard, the ledger) in-process, against the same
sites under FedAvg: same charges, and the FedAdam model is the Adam step
from the FedAvg aggregate.
"""

from __future__ import annotations

import math
import re
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.serverapp import Grid

from coordinator.config import CoordinatorConfig
from coordinator.ledger import RunLedger
from coordinator.publication import training_section
from coordinator.strategies.aggregate_guard import AggregateRejectedError, GuardEvent
from coordinator.strategies.builder import StrategyStack, build_strategy
from coordinator.strategies.server_optimizer import (
    ServerOptimizerStrategy,
    create_server_optimizer,
    describe_strategy,
    strategies,
)
from lifecycle.bom.model_card import summary_properties
from lifecycle.errors import ConfigurationError
from lifecycle.registry import Registry
from privacy.ledger import coordinator_ledger
from privacy.strategy_wrapper import StrategyWrapper
from tests.coordinator.cheating import make_cheating_mod
from tests.coordinator.test_aggregate_guard import SHAPES, _initial, _site_app
from tests.privacy.secagg.harness import LocalGrid

# ------------------------------------------------------------------ the step on known vectors


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps messages with the running task's identity; give this process one."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value, raising=False)


def _record(**arrays: np.ndarray) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def _adam(x: np.ndarray, deltas: list[np.ndarray], eta: float, yogi: bool = False) -> np.ndarray:
    """Reddi et al. (2021) Algorithm 2 (Adam/Yogi), β₁ = 0.9, β₂ = 0.99, τ = 1e-3; Flower bias-corrects Adam's η."""
    b1, b2, tau = 0.9, 0.99, 1e-3
    m, v = np.zeros_like(x), np.zeros_like(x)
    for t, delta in enumerate(deltas, start=1):
        m = b1 * m + (1 - b1) * delta
        if yogi:
            v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
        else:
            v = b2 * v + (1 - b2) * delta**2
        step = eta if yogi else eta * math.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
        x = x + step * m / (np.sqrt(v) + tau)
    return x


@pytest.mark.parametrize(("strategy", "eta", "yogi"), [("fedadam", 0.1, False), ("fedadam", 0.03, False),
                                                       ("fedyogi", 0.01, True)])
def test_the_server_step_is_reddis_update_on_the_aggregate(strategy: str, eta: float, yogi: bool) -> None:
    rng = np.random.default_rng(3)
    optimizer = create_server_optimizer(strategy, eta)
    assert optimizer is not None
    wrapper = ServerOptimizerStrategy(StrategyWrapper(optimizer), optimizer)
    x = np.array([0.5, -1.0, 2.0, 0.0], dtype=np.float32)
    current = _record(w=x, steps=np.array([7], dtype=np.int64))
    deltas = []
    for server_round in (1, 2, 3):
        delta = rng.normal(scale=0.2, size=4).astype(np.float32)
        deltas.append(delta)
        aggregate = _record(w=current["w"].numpy() + delta, steps=np.array([7 + server_round], dtype=np.int64))
        current = wrapper.step(server_round, current, aggregate)
        assert current["w"].numpy().dtype == np.float32
        assert current["steps"].numpy().tolist() == [7 + server_round]  # integer buffers: the aggregate's
    np.testing.assert_allclose(current["w"].numpy(), _adam(x.astype(np.float64), deltas, eta, yogi), rtol=1e-5)


def test_fedavgm_is_server_momentum() -> None:
    optimizer = create_server_optimizer("fedavgm", 0.5)
    assert optimizer is not None
    wrapper = ServerOptimizerStrategy(StrategyWrapper(optimizer), optimizer)
    current = _record(w=np.zeros(3, dtype=np.float32))
    d1, d2 = np.array([1.0, 0, -1], dtype=np.float32), np.array([0.0, 2, 0], dtype=np.float32)
    current = wrapper.step(1, current, _record(w=current["w"].numpy() + d1))
    np.testing.assert_allclose(current["w"].numpy(), 0.5 * d1)
    current = wrapper.step(2, current, _record(w=current["w"].numpy() + d2))
    np.testing.assert_allclose(current["w"].numpy(), 0.5 * d1 + 0.5 * (0.9 * d1 + d2), rtol=1e-6)


# ------------------------------------------------------------------ in the stack: SecAgg+, guard, ledger


def _stack(registry: Registry, run: str, *, events: list[GuardEvent] | None = None,
           **config: Any) -> tuple[StrategyStack, RunLedger]:
    cfg = CoordinatorConfig.from_mapping({"num-sites": 3, "watermark": "none", **config})
    ledger = RunLedger(coordinator_ledger(registry), run)
    stack = build_strategy(cfg, on_round=lambda report: None, num_params=sum(math.prod(s) for s in SHAPES.values()),
                           run_ledger=ledger, on_guard=(events.append if events is not None else None))
    return stack, ledger


def _charges(ledger: RunLedger) -> list[tuple[str, int, int, float, float]]:
    return sorted((c.site, c.round, c.steps, c.noise_multiplier, c.sample_rate) for c in ledger.ledger.charges()
                  if c.run_id == ledger.run_id)


def test_fedadam_under_secagg_steps_from_the_secure_sum_and_charges_as_fedavg(registry: Registry) -> None:
    plain, plain_ledger = _stack(registry, "run-avg")
    settings: dict[str, Any] = {"strategy": "fedadam", "server-lr": 0.05}
    adam, adam_ledger = _stack(registry, "run-adam", **settings)
    assert isinstance(adam.outer, ServerOptimizerStrategy) and not isinstance(plain.outer, ServerOptimizerStrategy)
    averaged = plain.outer.start(grid=cast(Grid, LocalGrid(_site_app(), 3)), initial_arrays=_initial(),
                                 num_rounds=1, timeout=10).arrays
    stepped = adam.outer.start(grid=cast(Grid, LocalGrid(_site_app(), 3)), initial_arrays=_initial(),
                               num_rounds=1, timeout=10).arrays
    for key in SHAPES:
        delta = averaged[key].numpy().astype(np.float64)  # the secure sum's mean update from zeros
        np.testing.assert_allclose(stepped[key].numpy(), _adam(np.zeros_like(delta), [delta], 0.05), atol=1e-4)
        assert not np.allclose(stepped[key].numpy(), averaged[key].numpy(), atol=1e-3)
    assert len(_charges(plain_ledger)) == 3 and _charges(plain_ledger) == _charges(adam_ledger)
    assert adam.tracked.rounds_aggregated == 1


def test_a_rejected_aggregate_never_reaches_the_server_optimiser(registry: Registry) -> None:
    events: list[GuardEvent] = []
    stack, _ = _stack(registry, "run-1", events=events, strategy="fedadam")
    optimizer = cast(ServerOptimizerStrategy, stack.outer).optimizer
    with pytest.raises(AggregateRejectedError):
        stack.outer.start(grid=cast(Grid, LocalGrid(_site_app(make_cheating_mod(1000.0, site=0)), 3)),
                          initial_arrays=_initial(), num_rounds=3, timeout=10)
    assert [e.action for e in events] == ["retry", "skip", "retry", "stop"]
    assert optimizer.m_t is None and optimizer.v_t is None  # type: ignore[attr-defined]  # no step was taken


# ------------------------------------------------------------------ configuration and the BOM


@pytest.mark.parametrize(("config", "message"), [
    ({"strategy": "fedsgd"}, "strategy 'fedsgd': choose one of fedavg, fedprox, fedadam, fedyogi, fedavgm"),
    ({"strategy": "fedprox"}, "strategy fedprox needs proximal-mu > 0 (got 0.0)"),
    ({"strategy": "fedprox", "proximal-mu": -0.1}, "strategy fedprox needs proximal-mu > 0 (got -0.1)"),
    ({"proximal-mu": 0.1}, "proximal-mu = 0.1 applies only to strategy fedprox"),
    ({"strategy": "fedadam", "server-lr": -1}, "server-lr must be ≥ 0"),
    ({"strategy": "fedprox", "proximal-mu": 0.1, "server-lr": 0.1},
     "server-lr applies only to the server optimisers (fedadam, fedyogi, fedavgm)"),
    ({"strategy": "fedadam", "server-lr": math.inf}, "must be finite"),
])
def test_bad_strategy_settings_are_refused_before_the_run(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        CoordinatorConfig.from_mapping({"num-sites": 3, **config})


@pytest.mark.parametrize("strategy", strategies())
def test_every_strategy_composes_with_robust_rules_site_dp_and_ckks(strategy: str) -> None:
    mu = {"proximal-mu": 0.01} if strategy == "fedprox" else {}
    for layer in ({"aggregation": "median", "secure-aggregation": "none"}, {"site-epsilon": 4.0},
                  {"secure-aggregation": "ckks", "he-public-context": "public.ctx"}):
        cfg = CoordinatorConfig.from_mapping({"num-sites": 3, "strategy": strategy, **mu, **layer})
        assert cfg.strategy == strategy
    assert CoordinatorConfig.from_mapping({}).strategy == "fedavg"  # the default


def test_the_bom_names_the_strategy_and_its_effective_parameters() -> None:
    cfg = CoordinatorConfig.from_mapping({"num-sites": 3, "strategy": "fedyogi"})
    section = training_section(cfg, {}, 2)
    assert section["strategy"] == describe_strategy("fedyogi") == {
        "name": "fedyogi", "proximal_mu": None,
        "server_optimizer": {"kind": "FedYogi", "server_lr": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.001}}
    assert ("fedguard:strategy", "fedyogi") in summary_properties(section, {})
    prox = describe_strategy("fedprox", 0.1)
    assert prox["proximal_mu"] == 0.1 and prox["server_optimizer"] is None
