"""An attacker under SecAgg+ follows the protocol: it masks its (unclipped) update; the sum's bounds catch it.

In-process: the real site ClientApp (protection required) on four virtual
sites, fedguard's SecAgg+ strategy over the in-memory grid, one round.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg

from coordinator.strategies.aggregate_bounds import AggregateBounds
from privacy.secagg import SecAggConfig
from privacy.secagg.strategy import SecAggPlusStrategy
from privacy.updates import flatten
from simulations.attacks import attack_mods, create_attack
from tests.simulations.attacks.sites import Sites, train_config, write_sites

CLIP = 1.0
CONFIG = SecAggConfig.recommended(4, clip_norm=CLIP, max_weight=100.0)


def _round(sites: Sites, arrays: ArrayRecord, config: ConfigRecord) -> tuple[np.ndarray, float, list[np.ndarray]]:
    """One SecAgg+ round: the new global vector, Σw, and every array the coordinator received."""
    strategy = SecAggPlusStrategy(FedAvg(fraction_evaluate=0.0), CONFIG)
    result = strategy.start(grid=sites.grid, initial_arrays=arrays, num_rounds=1,  # type: ignore[arg-type]
                            train_config=config)
    received = [a.numpy() for m in sites.grid.received for r in m.content.array_records.values() for a in r.values()]
    return flatten(result.arrays)[0], strategy.total_weight, received


@pytest.mark.parametrize("spec", ["scaling:20", "sign-flipping:40,clip=skip"])
def test_an_unclipped_attacker_sends_a_masked_update_and_the_aggregate_bound_rejects_the_sum(
        tmp_path: Path, fedguard_home: Path, spec: str) -> None:
    data = tmp_path / "data"
    names, spec_, arrays = write_sites(data, 4)
    config = train_config(names, spec_, data)
    start = flatten(arrays)[0]
    clear = [Sites(4).train(i, arrays, config) for i in range(4)]
    assert max(np.linalg.norm(d) for d in clear) < CLIP  # honest sites are inside the bound on their own
    bounds = AggregateBounds(CLIP, CONFIG.max_weight, resolution=1 / (2 * CONFIG.effective_scale))

    honest, weight, _ = _round(Sites(4, protected=True), arrays, config)
    assert bounds.check(start, honest, weight, 4) is None

    mods = attack_mods(create_attack(spec), frozenset({0}))
    attacked, weight, received = _round(Sites(4, protected=True, mods=[mods.site], update_mods=[mods.update]),
                                        arrays, config)
    factor = 20.0 if spec.startswith("scaling") else -40.0
    # equal sites (w = 60 each); the attacker's payload w·λΔ is unclipped, only held to the encoding's ±B
    payload = np.clip(60 * factor * clear[0], -CONFIG.bound, CONFIG.bound)
    expected = start + (payload + 60 * (clear[1] + clear[2] + clear[3])) / 240
    assert np.allclose(attacked, expected, atol=1e-4)
    assert all(a.dtype == np.uint32 for a in received) and len(received) == 4  # every upload masked
    violation = bounds.check(start, attacked, weight, 4)
    assert violation is not None and violation.bound == "l2-norm"


def test_an_attacker_that_clips_honestly_stays_inside_the_aggregate_bound(tmp_path: Path, fedguard_home: Path) -> None:
    """The documented gap: a harmful update of norm ≤ C passes every check on the sum (ACORN would close it)."""
    data = tmp_path / "data"
    names, spec_, arrays = write_sites(data, 4)
    config = train_config(names, spec_, data)
    mods = attack_mods(create_attack("sign-flipping:40"), frozenset({0}))
    attacked, weight, _ = _round(Sites(4, protected=True, mods=[mods.site], update_mods=[mods.update]),
                                 arrays, config)
    bounds = AggregateBounds(CLIP, CONFIG.max_weight, resolution=1 / (2 * CONFIG.effective_scale))
    assert bounds.check(flatten(arrays)[0], attacked, weight, 4) is None


def test_under_ckks_a_skipping_attacker_raises_its_clipping_instruction_and_still_goes_through_the_ckks_mod() -> None:
    """The HE instruction's ``clip-norm`` is what the CKKS mod clips to; the attacker rewrites only that."""
    from flwr.app import Context, Message, MessageType, RecordDict

    from privacy.he.instruction import HE_RECORD
    from simulations.attacks.unclipped import UNBOUNDED, skip_clipping

    seen: list[Message] = []

    def ckks_and_below(msg: Message, context: Context) -> Message:
        seen.append(msg)
        return Message(RecordDict(), reply_to=msg)

    instruction = ConfigRecord({"stage": "encrypt", "clip-norm": 2.0, "max-weight": 50.0})
    message = Message(RecordDict({HE_RECORD: instruction, "config": ConfigRecord({"clip-norm": 2.0, "lr": 0.1})}),
                      dst_node_id=1, message_type=MessageType.TRAIN)
    skip_clipping(message, Context(1, 1, {"partition-id": 0}, RecordDict(), {}), ckks_and_below)
    (passed,) = seen
    assert passed.content.config_records[HE_RECORD]["clip-norm"] == UNBOUNDED
    assert passed.content.config_records[HE_RECORD]["max-weight"] == 50.0 and HE_RECORD in passed.content
    assert "clip-norm" not in passed.content.config_records["config"]
