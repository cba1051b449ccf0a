"""Federated strategies (``strategy`` run-config key): FedAvg, FedProx and the server optimisers.

``strategy`` is orthogonal to ``aggregation`` (how the round's updates are
combined: FedAvg's weighted mean or a robust rule). It names what happens
around that combination:

============  ==========================================================  =========================
strategy      what changes                                                 parameters
============  ==========================================================  =========================
``fedavg``    nothing: the aggregate is the next global model (default)   —
``fedprox``   each site adds μ/2·‖w − w_global‖² to its local objective    ``proximal-mu`` (μ > 0)
              (``client.proximal``); the coordinator side is FedAvg's
``fedadam``   the server treats ``Δ = aggregate − global`` as a             ``server-lr`` (η; 0: 0.1)
              pseudo-gradient and takes an Adam step on it
``fedyogi``   the same with Yogi's second-moment update                   ``server-lr`` (η; 0: 0.01)
``fedavgm``   server momentum: ``x ← x + η·v``, ``v ← β·v + Δ``, β = 0.9   ``server-lr`` (η; 0: 1)
============  ==========================================================  =========================

The server step is Flower's own (``flwr.serverapp.strategy.FedAdam``,
``FedYogi``, ``FedAvgM``, whose ``aggregate_train`` does the step after
FedAvg): :class:`ServerOptimizerStrategy` hands the Flower strategy one
synthetic reply of weight 1 holding the round's aggregate (its FedAvg over
one reply is that aggregate, exactly), as the secure-aggregation layer hands
its sum to the rule inside it. The optimiser's state (``m_t``, ``v_t``, the
momentum) lives in the Flower object.

Where it sits (:mod:`coordinator.strategies.builder`): outside the aggregate
guard, directly inside ``RoundOffset`` (so Adam's bias correction sees true
round numbers). It steps only on aggregates the guard *accepted*:

* the guard judges what the sites sent. Its norm bounds are bounds on the
  sum of clipped updates; an Adam step normalises each coordinate
  (``m/(√v+τ)``), so the post-optimiser model cannot be held to them;
* its remedy (retry with fresh masks over the same sites, then skip) only
  makes sense for something the sites sent: a held-out accuracy drop caused
  by the server's own step (an η too large) would come back identical on the
  retry and be blamed on the sites. The held-out accuracy of the
  post-optimiser model is still measured every round (the central
  evaluation) and published;
* a rejected or skipped aggregate never reaches the optimiser, so it leaves
  no trace in the moments.

Privacy: the step is a function of the released aggregates and of the
coordinator's own state only, i.e. post-processing of what secure
aggregation and site-level DP release (Dwork & Roth 2014, Prop. 2.1): the
ledger charges the same rounds with the same ε whatever the strategy, and
SecAgg+/CKKS are unchanged (the coordinator still sees only the sum).
Integer buffers (e.g. a batch-norm counter) take the aggregate as it is.

A resumed run (``coordinator.runs``) restarts the optimiser's moments at
zero: the checkpoint holds the model, not the server optimiser's state.

Notes
-----
Reddi et al. (2021), "Adaptive Federated Optimization" (FedOpt: FedAdam,
FedYogi); Hsu et al. (2019), "Measuring the Effects of Non-Identical Data
Distribution for Federated Visual Classification" (FedAvgM); Li et al.
(2020), "Federated Optimization in Heterogeneous Networks" (FedProx).
Server-side momentum also damps Byzantine drift (Karimireddy et al. 2021,
"Learning from History for Byzantine Robust Optimization"), which is why the
server optimisers compose with the robust aggregation rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedYogi, Strategy

from coordinator import logger
from lifecycle.errors import ConfigurationError, TrainingError
from privacy.strategy_wrapper import StrategyWrapper

SERVER_MOMENTUM = 0.9
"""FedAvgM's β, fixed (Hsu et al. 2019 sweep β; 0.9 is the customary server momentum)."""

ServerOptimizerFactory = Callable[[float], FedAvg]
"""Builds the Flower strategy that takes the server step, from ``server-lr`` (0: its own default η)."""


def _fedadam(lr: float) -> FedAvg:
    return FedAdam(eta=lr) if lr > 0 else FedAdam()


def _fedyogi(lr: float) -> FedAvg:
    return FedYogi(eta=lr) if lr > 0 else FedYogi()


def _fedavgm(lr: float) -> FedAvg:
    return FedAvgM(server_learning_rate=lr or 1.0, server_momentum=SERVER_MOMENTUM)


SERVER_OPTIMIZERS: dict[str, ServerOptimizerFactory] = {"fedadam": _fedadam, "fedyogi": _fedyogi,
                                                        "fedavgm": _fedavgm}
"""Strategies that take a server step on the aggregate (``server-lr`` applies to these only)."""

CLIENT_STRATEGIES = ("fedavg", "fedprox")
"""Strategies whose coordinator side is FedAvg's (the aggregate is the next model)."""


def strategies() -> tuple[str, ...]:
    """Every ``strategy`` value, the default first."""
    return (*CLIENT_STRATEGIES, *SERVER_OPTIMIZERS)


def strategy_problems(strategy: str, proximal_mu: float, server_lr: float) -> list[str]:
    """What is wrong with this ``strategy``, ``proximal-mu``, ``server-lr`` combination (empty: nothing).

    Robust aggregation rules, secure aggregation and site-level DP compose with
    every strategy (see the module docstring), so only the strategy's own keys
    are checked here.
    """
    if strategy not in strategies():
        return [f"strategy '{strategy}': choose one of {', '.join(strategies())}"]
    problems = []
    if not (math.isfinite(proximal_mu) and math.isfinite(server_lr)):
        problems.append("proximal-mu and server-lr must be finite numbers")
    if strategy == "fedprox" and not proximal_mu > 0:
        problems.append(f"strategy fedprox needs proximal-mu > 0 (got {proximal_mu}); μ = 0 is fedavg "
                        "(Li et al. 2020 try 0.001–1)")
    if strategy != "fedprox" and proximal_mu != 0:
        problems.append(f"proximal-mu = {proximal_mu} applies only to strategy fedprox; set strategy = "
                        "\"fedprox\" or leave proximal-mu at 0")
    if server_lr < 0:
        problems.append(f"server-lr must be ≥ 0 (0: the strategy's default η), got {server_lr}")
    elif server_lr > 0 and strategy not in SERVER_OPTIMIZERS:
        problems.append(f"server-lr applies only to the server optimisers ({', '.join(SERVER_OPTIMIZERS)}); "
                        f"strategy {strategy} takes the aggregate as it is: leave server-lr at 0")
    return problems


def validate_strategy(strategy: str, proximal_mu: float, server_lr: float) -> None:
    """Raise :class:`ConfigurationError` with the first problem of :func:`strategy_problems`."""
    problems = strategy_problems(strategy, proximal_mu, server_lr)
    if problems:
        raise ConfigurationError(problems[0])


def create_server_optimizer(strategy: str, server_lr: float = 0.0) -> FedAvg | None:
    """Flower's strategy that takes ``strategy``'s server step, or None when there is none (fedavg, fedprox).

    ``CoordinatorConfig.validate`` has checked the combination (:func:`validate_strategy`).
    """
    if strategy not in strategies():
        raise ConfigurationError(strategy_problems(strategy, 0.0, 0.0)[0])
    factory = SERVER_OPTIMIZERS.get(strategy)
    return None if factory is None else factory(server_lr)


def describe_strategy(strategy: str, proximal_mu: float = 0.0, server_lr: float = 0.0) -> dict[str, Any]:
    """The strategy and the parameters it ran with, for the ML-BOM's training section (effective values)."""
    out: dict[str, Any] = {"name": strategy, "proximal_mu": proximal_mu if strategy == "fedprox" else None}
    opt = create_server_optimizer(strategy, server_lr)
    if isinstance(opt, FedAvgM):
        out["server_optimizer"] = {"kind": "FedAvgM", "server_lr": opt.server_learning_rate,
                                   "momentum": opt.server_momentum}
    elif opt is not None:
        out["server_optimizer"] = {"kind": type(opt).__name__, "server_lr": opt.eta,  # type: ignore[attr-defined]
                                   "beta_1": opt.beta_1, "beta_2": opt.beta_2,  # type: ignore[attr-defined]
                                   "tau": opt.tau}  # type: ignore[attr-defined]
    else:
        out["server_optimizer"] = None
    return out


def register_server_optimizer(name: str, factory: ServerOptimizerFactory, *, replace: bool = False) -> None:
    """Make ``name`` available to ``strategy = "<name>"`` (a research extension; DESIGN §7 item 4).

    Raises
    ------
    ConfigurationError
        ``name`` is taken and ``replace`` is false.
    """
    if (name in SERVER_OPTIMIZERS or name in CLIENT_STRATEGIES) and not replace:
        raise ConfigurationError(f"strategy '{name}' is already registered; pass replace=True to override it")
    SERVER_OPTIMIZERS[name] = factory


def _is_float(array: Array) -> bool:
    return np.issubdtype(np.dtype(array.dtype), np.floating)


class ServerOptimizerStrategy(StrategyWrapper):
    """Applies a Flower server optimiser to every aggregate the stack inside returns (module docstring).

    Parameters
    ----------
    inner : Strategy
        The rest of the stack (the aggregate guard and everything inside it).
    optimizer : FedAvg
        A Flower ``FedOpt`` subclass (``FedAdam``, ``FedYogi``, ``FedAdagrad``) or ``FedAvgM``; only its
        ``aggregate_train`` and its state are used, never its sampling.
    """

    def __init__(self, inner: Strategy, optimizer: FedAvg) -> None:
        super().__init__(inner)
        self.optimizer = optimizer
        self._current: tuple[int, ArrayRecord] | None = None

    def __getattr__(self, name: str) -> Any:  # the tracker's ``sites``, ``rounds_aggregated``, …
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def summary(self) -> None:
        opt = self.optimizer
        settings = ("server_learning_rate", "server_momentum", "eta", "beta_1", "beta_2", "tau")
        logger.info("server optimiser %s: %s", type(opt).__name__,
                    ", ".join(f"{name} = {getattr(opt, name)}" for name in settings if hasattr(opt, name)))
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._current = (server_round, arrays)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        current, self._current = self._current, None
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is None or current is None or current[0] != server_round:
            return arrays, metrics  # nothing accepted: the optimiser's state stays as it is
        return self.step(server_round, current[1], arrays), metrics

    def step(self, server_round: int, current: ArrayRecord, aggregate: ArrayRecord) -> ArrayRecord:
        """The next global model: the optimiser's step from ``current`` given the round's ``aggregate``.

        Floating-point arrays keep their dtype; other arrays (integer buffers) are the aggregate's.
        """
        keys = [k for k, a in aggregate.items() if _is_float(a)]
        if set(current.keys()) != set(aggregate.keys()):
            raise TrainingError(f"round {server_round}: the aggregate's arrays differ from the global model's, so "
                                "the server optimiser cannot step; check the aggregation rule (it changed the layout)")
        opt = self.optimizer
        if isinstance(opt, FedAvgM):
            opt.current_arrays = ArrayRecord({k: current[k] for k in keys})
        else:
            opt.current_arrays = {k: current[k].numpy() for k in keys}  # type: ignore[attr-defined]
        weight = str(opt.weighted_by_key)
        reply = Message(
            content=RecordDict({"arrays": ArrayRecord({k: aggregate[k] for k in keys}),
                                "metrics": MetricRecord({weight: 1.0})}),
            dst_node_id=0, message_type=MessageType.TRAIN, group_id=str(server_round),
        )
        stepped, _ = opt.aggregate_train(server_round, [reply])
        if stepped is None:
            raise TrainingError(f"round {server_round}: the server optimiser {type(opt).__name__} returned no model "
                                "from a valid aggregate; use strategy fedavg and report it")
        out: dict[str, Array] = {}
        for key, array in aggregate.items():
            if key in keys:
                value = np.asarray(stepped[key].numpy(), dtype=np.dtype(array.dtype))
                out[key] = Array(np.ascontiguousarray(value))
            else:
                out[key] = array
        return ArrayRecord(out)
