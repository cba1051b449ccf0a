"""FedProx at a site (issue 15, point 3): the proximal term pulls towards the global model, and costs no ε.

With μ > 0 a site ends closer to the weights it received than with μ = 0,
on the same seed, with and without DP-SGD; under DP-SGD the proximal
gradient is added after Opacus' clip-and-noise, so the site reports the
same DP cost (σ, q, steps, ε) and every ledger charges the same.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from client.app import make_client_app
from client.config import TrainConfig
from client.proximal import proximal_term
from client.training import plan_for, train_locally
from federation.protocol import PROXIMAL_MU, ProtocolError, SiteReply
from federation.tabular import TabularData
from lifecycle.architecture import ModelSpec, build_model
from tests.privacy.secagg.harness import LocalGrid


def _data(n: int = 60) -> TabularData:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(n, 5)).astype(np.float32)
    labels = (features[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    return TabularData(features, labels, "m", Path("x"))


def _cfg(mu: float, dp_epsilon: float) -> TrainConfig:
    return TrainConfig(server_round=1, total_rounds=1, local_epochs=3, batch_size=10, lr=0.1, dp_epsilon=dp_epsilon,
                       dp_delta=1e-5, max_grad_norm=1.0, features=tuple("abcde"), target="y",
                       spec=ModelSpec(5, 2, (8,)), seed=0, proximal_mu=mu)


def _distance_after_training(mu: float, dp_epsilon: float) -> tuple[float, int]:
    data, cfg = _data(), _cfg(mu, dp_epsilon)
    torch.manual_seed(0)
    model = build_model(cfg.spec)
    start = [p.detach().clone() for p in model.parameters()]
    plan = plan_for(cfg, data) if dp_epsilon > 0 else None
    result = train_locally(model, data, cfg, plan, generator=torch.Generator().manual_seed(0))
    distance = math.sqrt(sum(float((p.detach() - s).pow(2).sum()) for p, s in zip(model.parameters(), start,
                                                                                   strict=True)))
    return distance, result.steps


@pytest.mark.parametrize("dp_epsilon", [0.0, 3.0])
def test_a_site_with_mu_ends_closer_to_the_global_model(dp_epsilon: float) -> None:
    free, free_steps = _distance_after_training(0.0, dp_epsilon)
    pulled, pulled_steps = _distance_after_training(1.0, dp_epsilon)
    assert pulled < 0.5 * free  # measured (μ = 1): 0.09× of the free distance without DP, 0.24× with DP-SGD
    assert pulled_steps == free_steps  # the same steps: the DP history is the same


def test_the_proximal_gradient_is_mu_times_the_distance_and_the_hook_is_removed() -> None:
    layer = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0]]))
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    with proximal_term(layer, optimizer, 0.5):
        with torch.no_grad():
            layer.weight.add_(torch.tensor([[2.0, 0.0]]))  # moved away from the anchor by (2, 0)
        layer.weight.grad = torch.zeros_like(layer.weight)
        optimizer.step()  # w ← w − lr·μ·(w − w_global) = (3, −1) − 0.5·(2, 0)
        assert layer.weight.detach().tolist() == [[2.0, -1.0]]
    layer.weight.grad = torch.zeros_like(layer.weight)
    optimizer.step()
    assert layer.weight.detach().tolist() == [[2.0, -1.0]]  # outside the block: no proximal term


@pytest.mark.parametrize("mu", [-0.1, math.inf])
def test_an_impossible_mu_from_the_wire_is_refused(mu: float) -> None:
    layer = torch.nn.Linear(2, 1)
    with pytest.raises(ProtocolError, match="proximal-mu"), proximal_term(layer, torch.optim.SGD(
            layer.parameters(), lr=0.1), mu):
        pass


def test_mu_travels_in_the_typed_instructions_and_is_absent_without_fedprox() -> None:
    cfg = _cfg(0.25, 0.0)
    record = cfg.to_record()
    assert record[PROXIMAL_MU] == 0.25 and TrainConfig.from_record(record).proximal_mu == 0.25
    plain = replace(cfg, proximal_mu=0.0).to_record()
    assert PROXIMAL_MU not in plain and TrainConfig.from_record(plain).proximal_mu == 0.0
    with pytest.raises(ProtocolError, match="proximal-mu"):
        TrainConfig.from_record({**dict(record), PROXIMAL_MU: "lots"})


SCHEMA = ('label = "y"\nlabel-values = ["no", "yes"]\n\n[columns]\n'
          'a = { type = "float" }\nb = { type = "float" }\n')


def _site_reply(tmp_path: Path, mu: float) -> tuple[SiteReply, ArrayRecord]:
    """One DP-SGD round of the real site app (no secure aggregation), as the coordinator receives it."""
    rng = np.random.default_rng(1)
    rows = "\n".join(f"{a:.4f},{b:.4f},{'yes' if a + b > 0 else 'no'}" for a, b in rng.normal(size=(50, 2)))
    tmp_path.mkdir()
    (tmp_path / "schema.toml").write_text(SCHEMA)
    (tmp_path / "site.csv").write_text("a,b,y\n" + rows + "\n")
    grid = LocalGrid(make_client_app(require_protection=False), 1)
    node = grid.get_node_ids()[0]
    grid.contexts[node] = Context(run_id=1, node_id=node, state=RecordDict(), run_config={}, node_config={
        "data-path": str(tmp_path / "site.csv"), "schema-path": str(tmp_path / "schema.toml"), "site-name": "kings",
        "audit-path": str(tmp_path / "audit.jsonl"), "ledger-path": str(tmp_path / "ledger.db")})
    cfg = TrainConfig(server_round=1, total_rounds=2, local_epochs=2, batch_size=10, lr=0.1, dp_epsilon=2.0,
                      dp_delta=1e-5, max_grad_norm=1.0, features=("a", "b"), target="y", spec=ModelSpec(2, 2, (4,)),
                      seed=3, labels=("no", "yes"), proximal_mu=mu)
    torch.manual_seed(0)
    arrays = ArrayRecord(build_model(cfg.spec).state_dict())
    (reply,) = grid.send_and_receive([Message(RecordDict({"config": ConfigRecord(dict(cfg.to_record())),
                                                          "arrays": arrays}),
                                              dst_node_id=node, message_type=MessageType.TRAIN)])
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    site = SiteReply.of(reply)
    assert site is not None
    return site, reply.content.array_records["arrays"]


def test_the_site_reports_the_same_dp_cost_with_and_without_fedprox(tmp_path: Path) -> None:
    free, free_arrays = _site_reply(tmp_path / "free", 0.0)
    prox, prox_arrays = _site_reply(tmp_path / "prox", 0.5)
    assert free.dp is not None and free.epsilon is not None and free.epsilon > 0
    assert prox.dp == free.dp and prox.epsilon == free.epsilon  # σ, q, steps, δ, accountant: what is charged
    assert prox.dp_report("kings") == free.dp_report("kings")
    assert prox.ledger_epsilon == free.ledger_epsilon  # the site's own ledger composed the same ε
    assert any(not np.array_equal(free_arrays[k].numpy(), prox_arrays[k].numpy()) for k in free_arrays)
