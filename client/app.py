"""The site's Flower ``ClientApp`` (Message API).

Runs unchanged under the simulation engine (one virtual site per Ray actor
call) and in a deployed SuperNode. Per round it: validates the local file
against the site's schema (node config ``data-path``, ``schema-path``;
docs/site-data.md), trains (DP-SGD when a target ε is set),
and replies with the new weights, the example count, and a ``site`` record
holding the data manifest and the ε its accountant has spent so far. Its
privacy state (steps taken, σ, sample rate) lives in the node's ``Context``
state, so ε composes correctly across rounds.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from torch import nn

from client import logger
from client.audit import site_audit_mod
from client.config import SiteIdentity, TrainConfig
from client.consent import excluded_records
from client.data import load_site_data, site_data_mod
from client.device import describe, seed_torch, training_device
from client.protection import REQUIRE_KEY, make_protection_mod
from client.refusal import refusal_mod
from client.training import plan_for, train_locally
from federation.contract import DataContract
from federation.mapping import load_site_schema
from federation.protocol import (
    CONFIG_RECORD,
    METRICS_RECORD,
    EvaluateMetrics,
    IdentityReply,
    SiteReply,
    TrainMetrics,
)
from federation.reference_share import ACTION as REFERENCE_ACTION
from federation.reference_share import LocalData, share_reference
from federation.schema import SiteSchema
from federation.tabular import TabularData
from lifecycle.architecture import build_model
from privacy.dp_sgd import DPPlan, secure_rng_available
from privacy.ledger.charges import RecordLevelReport
from privacy.ledger.guard import ledger_mod
from privacy.records import metric_record, required_arrays, required_config
from privacy.site_dp import SITE_RECORD, site_dp_mod
from privacy.updates import array_record_of, state_dict_of

_STATE_KEY = "fedguard-dp"


def _restore_plan(context: Context, cfg: TrainConfig, data: TabularData) -> tuple[DPPlan, int]:
    """The plan fixed in the first round (σ must not change mid-run) and the steps taken.

    σ is calibrated once, in the site's first round; later rounds reuse it
    from the node state (calibration is a search over the accountant).
    """
    state = metric_record(context.state, _STATE_KEY)
    if state is None:
        return plan_for(cfg, data), 0
    values = {key: float(value) for key, value in state.items() if isinstance(value, (int, float))}
    plan = DPPlan(
        cfg.dp_epsilon, cfg.dp_delta, values["max-grad-norm"], values["sample-rate"],
        int(values["planned-steps"]), values["noise-multiplier"],
    )
    return plan, int(values["steps"])


def _save_plan(context: Context, plan: DPPlan, steps: int) -> None:
    context.state[_STATE_KEY] = MetricRecord(
        {
            "steps": steps, "noise-multiplier": plan.noise_multiplier, "sample-rate": plan.sample_rate,
            "planned-steps": plan.planned_steps, "max-grad-norm": plan.max_grad_norm,
        }
    )


def _site_data(site: SiteIdentity, cfg: TrainConfig) -> TabularData:
    """The site's file checked against its schema file (deployment) or the implicit schema (simulation).

    A schema that maps the site's export onto the federation's data contract
    is checked through the contract the run carries (``federation.mapping``).
    Records the site withdrew are left out, and a site that withdrew as a
    whole refuses here (:mod:`client.consent`), before any training,
    evaluation or statistic.
    """
    exclude = excluded_records(site.consent_path, site.name)
    schema = (load_site_schema(site.schema_path) if site.schema_path is not None
              else SiteSchema.implicit(cfg.features, cfg.target, cfg.spec.num_classes))
    contract = DataContract.from_json(cfg.contract, source="the run's data contract") if cfg.contract else None
    return load_site_data(site.data_path, schema, cfg.features, cfg.target, cfg.spec.num_classes, cfg.labels,
                          contract, exclude)


def _prepare(msg: Message, context: Context) -> tuple[TrainConfig, SiteIdentity, TabularData, nn.Module]:
    """Parse the instructions, load and validate the local file, and load the global weights."""
    torch.set_num_threads(1)  # one Ray actor per core: no oversubscription
    cfg = TrainConfig.from_record(required_config(msg.content, CONFIG_RECORD))
    site = SiteIdentity.from_context(context, cfg)
    data = _site_data(site, cfg)
    model = build_model(cfg.spec)
    model.load_state_dict(state_dict_of(required_arrays(msg.content, "arrays")))
    return cfg, site, data, model


def _device(context: Context, cfg: TrainConfig) -> torch.device:
    """The site's node config ``device`` if it set one (its hardware, its say), else the run's."""
    return training_device(str(context.node_config.get("device", cfg.device)))


def train(msg: Message, context: Context) -> Message:
    """One round of local training; see the module docstring for the reply's records."""
    cfg, site, data, model = _prepare(msg, context)
    device = _device(context, cfg)
    generator = torch.Generator().manual_seed(cfg.seed * 1009 + cfg.server_round)
    seed_torch(cfg.seed * 7919 + cfg.server_round, device)

    reply = SiteReply(site.name, data.manifest, secure_rng_available(), describe(device))
    if cfg.dp_enabled:
        plan, steps_before = _restore_plan(context, cfg, data)
        result = train_locally(model, data, cfg, plan, generator=generator, device=device)
        steps = steps_before + result.steps
        _save_plan(context, plan, steps)
        reply = replace(reply, epsilon=plan.history(steps).epsilon(), max_grad_norm=plan.max_grad_norm,
                        clipping=result.clipping, dp=_report(plan, steps))
    else:
        result = train_locally(model, data, cfg, None, generator=generator, device=device)
    logger.info("site %s round %d: %d examples, loss %.4f, on %s", site.name, cfg.server_round,
                result.num_examples, result.train_loss, reply.device)
    content = RecordDict(
        {
            "arrays": array_record_of(model.state_dict()),
            METRICS_RECORD: TrainMetrics(result.num_examples, result.train_loss).to_record(),
            SITE_RECORD: reply.to_record(),
        }
    )
    return Message(content=content, reply_to=msg)


def _report(plan: DPPlan, steps: int) -> RecordLevelReport:
    """What the site reports of its DP-SGD: σ, q, ``steps`` (this run's, or one round's), δ, accountant."""
    return RecordLevelReport(plan.noise_multiplier, plan.sample_rate, steps, plan.delta, plan.accountant)


def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the site's own data (loss and accuracy only)."""
    _, _, data, model = _prepare(msg, context)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(data.features))
        labels = torch.from_numpy(data.labels)
        loss = float(torch.nn.functional.cross_entropy(logits, labels))
        accuracy = float((logits.argmax(1) == labels).float().mean())
    metrics = EvaluateMetrics(data.num_examples, loss, accuracy).to_record()
    return Message(content=RecordDict({METRICS_RECORD: metrics}), reply_to=msg)


def identify(msg: Message, context: Context, *, require_protection: bool = True) -> Message:
    """Answer the coordinator's pre-run query: who this site is, its data manifest, its DP plan, its policy.

    Public metadata only (the same the site sends with every update), so that
    the coordinator can check each site against its privacy cap before the
    first round instead of after it. No histogram: reference counts leave only
    noised and through a secure sum (:func:`reference`). The policy (whether
    it refuses clear updates, its own record-level ε cap) lets the coordinator
    refuse before the first round a job this site would refuse in it.
    """
    cfg = TrainConfig.from_record(required_config(msg.content, CONFIG_RECORD))
    site = SiteIdentity.from_context(context, cfg)
    data = _site_data(site, cfg)
    per_round = None
    if cfg.dp_enabled:
        plan, steps = _restore_plan(context, cfg, data)
        _save_plan(context, plan, steps)  # calibrated once: the first round reuses it
        per_round = _report(plan, plan.steps_per_epoch * cfg.local_epochs)
    record = IdentityReply(site.name, data.manifest, data.num_examples, per_round,
                           bool(context.node_config.get(REQUIRE_KEY, require_protection)),
                           _epsilon_cap(context)).fields()
    return Message(content=RecordDict({SITE_RECORD: ConfigRecord(record)}), reply_to=msg)


def _epsilon_cap(context: Context) -> float | None:
    """The tightest record-level ε cap the site's node config sets (``privacy.ledger.guard``), or None."""
    caps = [float(value) for key in ("epsilon-cap", "record-epsilon-cap")
            if isinstance(value := context.node_config.get(key), (int, float)) and not isinstance(value, bool)]
    return min(caps) if caps else None


def reference(msg: Message, context: Context) -> Message:
    """Take part in (or decline) the secure sum of noised reference histograms (:mod:`federation.reference_share`)."""

    def local() -> LocalData:
        cfg = TrainConfig.from_record(required_config(msg.content, CONFIG_RECORD))
        site = SiteIdentity.from_context(context, cfg)
        data = _site_data(site, cfg)
        return LocalData(site.name, data.manifest, data.features)

    return share_reference(msg, context, local)


class SiteClientApp(ClientApp):
    """The site's ClientApp; pickled as the arguments that built it, rebuilt once per process.

    Why: Flower's simulation engine pickles the function that returns the
    ClientApp with every message it sends a Ray actor (``RayBackend.process_message``),
    and a ClientApp pickles by value as a tree of closures (every mod and
    handler wrapper): a cost per message on both sides that grew with fedguard's
    mod stack (``benchmarks/simulation.py``). This one pickles as a token and the
    arguments of :func:`make_client_app`; a process rebuilds the app the first
    time it sees the token and reuses it for the next messages
    (:func:`_rebuilt`). The app holds no state between messages (its mods keep
    theirs in the message's ``Context`` or build it per call), so reuse changes
    nothing a site sees or sends.
    """

    def __init__(self, token: str, recipe: dict[str, Any], mods: Sequence[Mod]) -> None:
        super().__init__(mods=list(mods))
        self.token, self.recipe = token, recipe

    def __reduce__(self) -> tuple[Callable[[str, dict[str, Any]], ClientApp], tuple[str, dict[str, Any]]]:
        return _rebuilt, (self.token, self.recipe)


_REBUILT: OrderedDict[str, ClientApp] = OrderedDict()
_REBUILT_LOCK = threading.Lock()


def _rebuilt(token: str, recipe: dict[str, Any]) -> ClientApp:
    """The app :class:`SiteClientApp` ``token`` stands for, built here once (a few per process are kept)."""
    with _REBUILT_LOCK:
        app = _REBUILT.get(token)
        if app is None:
            app = _REBUILT[token] = make_client_app(**recipe, _token=token)
            while len(_REBUILT) > 8:
                _REBUILT.popitem(last=False)
        else:
            _REBUILT.move_to_end(token)
        return app


def make_client_app(*, require_protection: bool = True, mods: Sequence[Mod] = (),
                    update_mods: Sequence[Mod] = (), _token: str | None = None) -> ClientApp:
    """The site's ClientApp; ``require_protection`` refuses clear updates unless a node config says otherwise.

    Mod order on the train path (outermost first): the site's audit log
    (sees every final reply), the refusal mod (any failure below becomes a
    reason code and a line without data, ``client.refusal``), the data check
    (a bad file becomes a ``data-invalid`` refusal), any extra ``mods``
    (tests), protection routing (SecAgg+ or CKKS), any extra ``update_mods``
    (research: a site that rewrites its trained update before protection
    clips and masks or encrypts it, ``simulations.attacks``), the site's own
    privacy ledger (veto), site-level DP noise, then local training.
    """
    recipe: dict[str, Any] = {"require_protection": require_protection, "mods": tuple(mods),
                              "update_mods": tuple(update_mods)}
    client_app = SiteClientApp(_token or uuid.uuid4().hex, recipe, [site_audit_mod, refusal_mod, site_data_mod, *mods])
    protection = make_protection_mod(require_protection=require_protection)
    client_app.train(mods=[protection, *update_mods, ledger_mod, site_dp_mod])(train)
    client_app.evaluate()(evaluate)

    def identify_site(msg: Message, context: Context) -> Message:
        return identify(msg, context, require_protection=require_protection)

    client_app.query()(identify_site)
    client_app.query(REFERENCE_ACTION)(reference)
    return client_app


app = make_client_app()
