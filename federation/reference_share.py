"""A site's part in the reference histograms: offered, noised, charged, then only securely summed.

Right after the identity query the coordinator sends every identified site a
``query.reference`` message at stage ``offer``: the bin edges, the target
(ε, δ) and the secure sum it will run (SecAgg+ or CKKS). The site answers
``accept`` or ``decline``. It declines when its node config says
``share-reference = false``, when its own ledger would go over a cap, or when
the edges do not fit its data. The accepting sites then take part in one
secure sum (:mod:`privacy.secure_sum`); at the stage where its vector leaves
(SecAgg+'s masked input, CKKS' encrypt), the site

1. computes its histogram over the edges (:func:`federation.reference.flat_histogram`),
2. fixes its noise share with :func:`noise_plan` from the sum's promised
   contributor bounds (the coordinator computes the same plan, so neither
   side trusts the other's arithmetic),
3. records the charge in its own ledger (kind ``reference``, enforced: over
   its cap it sends nothing),
4. adds discrete Gaussian noise and hands the vector to the secure sum,

once per run: a second request to release is refused. See
:mod:`federation.reference` for what the noised sum discloses.

Notes
-----
Sensitivity: one record changes one count per feature by one (add/remove
adjacency), so the flat vector of ``F`` histograms has L2 sensitivity ``√F``.
Noise: Kairouz, Liu & Steinke (2021), via :mod:`privacy.discrete_gaussian`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from federation.protocol import REFERENCE_MESSAGE_TYPE, REFERENCE_RECORD, ReferenceAnswer, ReferenceRequest
from lifecycle.bom.reference import flat_histogram, num_bins
from lifecycle.errors import ConfigurationError
from privacy.discrete_gaussian import DistributedPlan, sample, secure_generator
from privacy.ledger.base import Charge, PrivacyLedger
from privacy.ledger.guard import default_site_ledger
from privacy.records import config_record
from privacy.secure_sum import Bounds, answer

ACTION = REFERENCE_MESSAGE_TYPE.removeprefix("query.")
"""The action ``ClientApp.query`` routes on (``@app.query("reference")``)."""
SHARE_KEY = "share-reference"
"""Node config key: ``false`` and the site takes no part in the reference (default ``true``)."""
KIND = "reference"
_STATE = "fedguard-reference"
_SUM_STATE = "fedguard-reference-sum"


def noise_plan(request: ReferenceRequest, bounds: Bounds) -> DistributedPlan:
    """Each share's σ and the charge of the release: one function, called by the coordinator and every site."""
    return DistributedPlan.calibrate(request.epsilon, request.delta, math.sqrt(len(request.edges)),
                                     num_bins(request.edges), bounds.min_contributors, bounds.max_contributors)


def reference_charge(site: str, manifest: str, run_id: str, plan: DistributedPlan) -> Charge:
    """The ledger entry of one site's release (round 0: before training; one Gaussian step, q = 1, RDP)."""
    h = plan.history()
    return Charge(site, manifest, run_id, 0, KIND, h.noise_multiplier, h.sample_rate, h.steps, h.delta, h.accountant)


@dataclass(frozen=True)
class LocalData:
    """The site's name, its data manifest and its feature matrix (never leaves the site)."""

    name: str
    manifest: str
    features: np.ndarray


Local = Callable[[], LocalData]
OpenLedger = Callable[[Context, str], PrivacyLedger]


def share_reference(msg: Message, context: Context, local: Local, *,
                    open_ledger: OpenLedger = default_site_ledger) -> Message:
    """Answer one ``query.reference`` message (see the module docstring)."""
    stage, request = ReferenceRequest.from_message(msg)
    if stage == "offer":
        accepted, reason = _offer(context, request, local, open_ledger)
        return Message(RecordDict({REFERENCE_RECORD: ReferenceAnswer(accepted, reason).to_record()}), reply_to=msg)
    run_id = str(msg.metadata.run_id)

    def payload(bounds: Bounds) -> np.ndarray:
        return _release(context, request, bounds, local(), run_id, open_ledger)

    return answer(msg, context, payload, state_key=_SUM_STATE)


def _offer(context: Context, request: ReferenceRequest, local: Local, open_ledger: OpenLedger) -> tuple[bool, str]:
    share = context.node_config.get(SHARE_KEY, True)
    if share is False or str(share).lower() in ("false", "0", "no"):
        return False, "declined by the site (share-reference = false)"
    data = local()
    if len(request.edges) != data.features.shape[1]:
        return False, f"edges for {len(request.edges)} features, the site's data has {data.features.shape[1]}"
    best = DistributedPlan.calibrate(request.epsilon, request.delta, math.sqrt(len(request.edges)),
                                     num_bins(request.edges), 1, 1)
    projection = open_ledger(context, data.name).project(data.name, data.manifest, KIND, best.history())
    if not projection.allowed:
        return False, "declined: the site's privacy budget for the reference would be exceeded"
    return True, "accepted"


def _release(context: Context, request: ReferenceRequest, bounds: Bounds, data: LocalData, run_id: str,
             open_ledger: OpenLedger) -> np.ndarray:
    """The noised counts, after the charge is recorded; at most once per run."""
    if request.secure_sum != bounds.mechanism:
        raise ConfigurationError(f"the offer named {request.secure_sum} but the sum runs {bounds.mechanism}")
    if config_record(context.state, _STATE) is not None:
        raise ConfigurationError("this site already released its reference counts in this run; refused")
    if len(request.edges) != data.features.shape[1] or num_bins(request.edges) != bounds.length:
        raise ConfigurationError("the reference edges do not match this site's data or the sum's length")
    plan = noise_plan(request, bounds)
    ledger = open_ledger(context, data.name)
    ledger.record(reference_charge(data.name, data.manifest, run_id, plan), actor=f"site:{data.name}",
                  enforce=True)  # over the site's cap: PrivacyBudgetExceeded, and nothing leaves
    context.state[_STATE] = ConfigRecord({"released": True, "epsilon": plan.epsilon()})
    counts = flat_histogram(data.features, request.edges)
    noised: np.ndarray = counts + sample(plan.sigma, counts.size, secure_generator())
    return noised
