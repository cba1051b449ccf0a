"""Every message between the sites and the coordinator, typed, with its defaults in one place.

Flower carries fedguard's messages as ``ConfigRecord``/``MetricRecord``
values with hyphenated keys (Flower's run-config convention). Each message
is a frozen dataclass here with ``to_record()`` and ``from_record()``, so a
key or a default is written once, and a missing or mistyped value fails
where it arrives with a :class:`ProtocolError` naming the key, instead of a
``KeyError`` (or a silent ``float('…')``) deep in training:

==========================  =========================================  ====================
message                     sent                                       record
==========================  =========================================  ====================
:class:`TrainConfig`        coordinator → site: train, evaluate, the   ``config``
                            identity query (round 0)
:class:`WitnessCheckpoint`  coordinator → site, beside the             ``config``
                            instructions: the newest signed audit
                            checkpoint, which the site witnesses
:class:`IdentityReply`      site → coordinator, before the first       ``site``
                            round: who, which data, the DP cost of a
                            round
:class:`SiteReply`          site → coordinator, with every update      ``site``
:class:`TrainMetrics`,      site → coordinator: the example weight,    ``metrics``
:class:`EvaluateMetrics`    the losses
:class:`ReferenceRequest`   coordinator → site, before the first       ``reference``
                            round: offer, then secure sum of the
                            noised reference histograms
:class:`ReferenceAnswer`    site → coordinator: takes part or not      ``reference``
:class:`SiteRefusal`        site → coordinator, in place of any reply  the error reply's
                            the site refuses or fails: a reason code   ``reason``
                            and a one-line message, never data
==========================  =========================================  ====================

The records of the privacy mechanisms keep their own typed messages in
``privacy/`` (SecAgg+ stages, CKKS and site-level DP instructions), and so
does the DP report inside the ``site`` record
(:class:`privacy.ledger.charges.DPReport`), which the site's privacy ledger
reads before anything else; :class:`SiteReply` composes it.

What the ``name`` fields are worth: a site *reports* its name, the
coordinator *binds* it to the identity it enrolled (``coordinator.identity``):
a reply whose name is not its node's enrolled one is refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord, Error, Message, MetricRecord

from federation.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CLIP_NORM,
    DEFAULT_DEVICE,
    DEFAULT_DP_DELTA,
    DEFAULT_DP_EPSILON,
    DEFAULT_HIDDEN,
    DEFAULT_LOCAL_EPOCHS,
    DEFAULT_LR,
    DEFAULT_MAX_GRAD_NORM,
    DEFAULT_SEED,
)
from lifecycle.architecture import ModelSpec
from lifecycle.bom.reference import Edges
from lifecycle.description import canonical_json
from lifecycle.errors import ConfigurationError
from privacy.he.mod import SECRET_CONTEXT_KEY
from privacy.ledger.charges import LEDGER_EPSILON, MANIFEST, NAME, STEPS, DPReport, RecordLevelReport
from privacy.records import config_record
from privacy.site_dp import SITE_FIELDS_PREFIX, SITE_RECORD

CONFIG_RECORD = "config"
"""The instructions' record in a train, evaluate or query message."""
METRICS_RECORD = "metrics"
SERVER_ROUND = "server-round"
"""Flower's strategies write each round's number under this key (``FedAvg.configure_train``)."""
NUM_EXAMPLES = "num-examples"
CLIP_NORM = "clip-norm"
"""The L2 bound a clear update is clipped to and checked against (``coordinator.strategies.validation``)."""
DATA_CONTRACT = "data-contract"
PROXIMAL_MU = "proximal-mu"
"""FedProx's μ in the ``config`` record (Flower's ``FedProx`` uses the same key); absent: no proximal term."""
"""The federation's data contract (canonical JSON) in the ``config`` record, when one is declared."""
MODEL_SPEC = "model-spec"
"""A model that is not the MLP (a CNN, a custom module and its code hash): its whole spec as canonical JSON.

Absent for an MLP, whose ``num-classes``/``hidden`` keys describe it as before;
``num-classes`` and ``hidden`` are still sent, and must agree with it."""

__all__ = [
    "AUDIT_CHECKPOINT", "AUDIT_KEY", "WitnessCheckpoint",
    "CLIP_NORM", "CONFIG_RECORD", "DEFAULT_BATCH_SIZE", "DEFAULT_CLIP_NORM", "DEFAULT_DEVICE", "DEFAULT_DP_DELTA",
    "DEFAULT_DP_EPSILON", "DEFAULT_HIDDEN", "DEFAULT_LOCAL_EPOCHS", "DEFAULT_LR", "DEFAULT_MAX_GRAD_NORM",
    "DEFAULT_SEED", "METRICS_RECORD", "NUM_EXAMPLES", "SERVER_ROUND", "EvaluateMetrics", "IdentityReply",
    "ProtocolError", "SiteReply", "TrainConfig", "TrainMetrics", "bom_dp", "clip_norm_of", "identity_query",
    "lineage_report", "round_of", "with_steps", "REFERENCE_MESSAGE_TYPE", "REFERENCE_RECORD", "ReferenceAnswer",
    "ReferenceRequest", "decode_edges", "encode_edges", "REFUSAL_CODES", "REFUSAL_PREFIX", "SiteRefusal",
    "PROXIMAL_MU", "MODEL_SPEC",
]



class ProtocolError(ConfigurationError):
    """A message between site and coordinator lacks a key or holds a value of the wrong type."""


def _value(record: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in record:
        raise ProtocolError(f"the {what} lacks '{key}'; coordinator and site versions differ")
    return record[key]


def _wrong(key: str, value: Any, expected: str, what: str) -> ProtocolError:
    return ProtocolError(f"the {what}'s '{key}' is {value!r}, not {expected}; coordinator and site versions "
                         "differ or the message was altered")


def _int(record: Mapping[str, Any], key: str, what: str) -> int:
    value = _value(record, key, what)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise _wrong(key, value, "an integer", what)
    return int(value)


def _float(record: Mapping[str, Any], key: str, what: str) -> float:
    value = _value(record, key, what)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise _wrong(key, value, "a number", what)
    return float(value)


def _str(record: Mapping[str, Any], key: str, what: str) -> str:
    value = _value(record, key, what)
    if not isinstance(value, str):
        raise _wrong(key, value, "text", what)
    return value


def _list(record: Mapping[str, Any], key: str, kind: type, what: str) -> tuple[Any, ...]:
    value = _value(record, key, what)
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise _wrong(key, value, f"a list of {kind.__name__}", what)
    return tuple(value)


def _labels(record: Mapping[str, Any], key: str, what: str) -> tuple[str, ...]:
    value = _value(record, key, what)
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise _wrong(key, value, "a list of class labels", what)
    return tuple(str(v) for v in value)


def _optional(record: Mapping[str, Any], key: str, read: Any, what: str, default: Any) -> Any:
    return read(record, key, what) if key in record else default


@dataclass(frozen=True)
class TrainConfig:
    """One round's instructions (train, evaluate, and the identity query as round 0)."""

    server_round: int
    total_rounds: int
    local_epochs: int
    batch_size: int
    lr: float
    dp_epsilon: float
    dp_delta: float
    max_grad_norm: float
    features: tuple[str, ...]
    target: str
    spec: ModelSpec
    seed: int
    data_dir: str = ""
    labels: tuple[str, ...] = ()
    device: str = DEFAULT_DEVICE  # the run's ``site-device``; a site's node config ``device`` wins (client.device)
    he_secret_context: str = ""  # simulation only: where virtual sites find the shared CKKS secret context
    contract: str = ""
    """The federation's data contract as canonical JSON (:mod:`federation.contract`), empty when none is declared:
    a site whose bundle predates a contract change still checks and trains against the run's."""
    proximal_mu: float = 0.0
    """FedProx's μ (strategy ``fedprox``): the site adds μ/2·‖w − w_global‖² (``client.proximal``); 0: none."""

    WHAT = "round configuration"

    @property
    def dp_enabled(self) -> bool:
        return self.dp_epsilon > 0

    def to_record(self) -> ConfigRecord:
        """The ``config`` record (Flower's strategies overwrite ``server-round`` each round)."""
        values: dict[str, Any] = {
            SERVER_ROUND: self.server_round, "total-rounds": self.total_rounds, "local-epochs": self.local_epochs,
            "batch-size": self.batch_size, "lr": self.lr, "dp-epsilon": self.dp_epsilon, "dp-delta": self.dp_delta,
            "max-grad-norm": self.max_grad_norm, "features": list(self.features), "target": self.target,
            "num-classes": self.spec.num_classes, "labels": list(self.labels), "hidden": list(self.spec.hidden),
            "seed": self.seed, "data-dir": self.data_dir, "device": self.device,
        }
        if self.he_secret_context:
            values[SECRET_CONTEXT_KEY] = self.he_secret_context
        if self.contract:
            values[DATA_CONTRACT] = self.contract
        if self.proximal_mu:
            values[PROXIMAL_MU] = self.proximal_mu
        if self.spec.kind != "mlp":
            values[MODEL_SPEC] = canonical_json(self.spec.to_dict())
        return ConfigRecord(values)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TrainConfig:
        """Parse the ``config`` record; :class:`ProtocolError` names the first missing or mistyped key."""
        w = cls.WHAT
        features = _list(record, "features", str, w)
        return cls(
            server_round=_int(record, SERVER_ROUND, w), total_rounds=_int(record, "total-rounds", w),
            local_epochs=_int(record, "local-epochs", w), batch_size=_int(record, "batch-size", w),
            lr=_float(record, "lr", w), dp_epsilon=_float(record, "dp-epsilon", w),
            dp_delta=_float(record, "dp-delta", w), max_grad_norm=_float(record, "max-grad-norm", w),
            features=features, target=_str(record, "target", w),
            spec=_spec(record, features, w),
            seed=_int(record, "seed", w), data_dir=_optional(record, "data-dir", _str, w, ""),
            labels=_optional(record, "labels", _labels, w, ()),
            device=_optional(record, "device", _str, w, DEFAULT_DEVICE),
            he_secret_context=_optional(record, SECRET_CONTEXT_KEY, _str, w, ""),
            contract=_optional(record, DATA_CONTRACT, _str, w, ""),
            proximal_mu=_optional(record, PROXIMAL_MU, _float, w, 0.0),
        )


def _spec(record: Mapping[str, Any], features: tuple[str, ...], what: str) -> ModelSpec:
    """The model to train: ``model-spec`` when present, else the MLP of ``num-classes``/``hidden``."""
    num_classes, hidden = _int(record, "num-classes", what), _list(record, "hidden", int, what)
    if MODEL_SPEC not in record:
        return ModelSpec(in_features=len(features), num_classes=num_classes, hidden=hidden)
    text = _str(record, MODEL_SPEC, what)
    try:
        spec = ModelSpec.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise _wrong(MODEL_SPEC, text[:80], f"a model description ({exc})", what) from None
    if (spec.in_features, spec.num_classes, spec.hidden) != (len(features), num_classes, hidden):
        raise _wrong(MODEL_SPEC, text[:80], "a model of the round's features and classes", what)
    return spec


AUDIT_CHECKPOINT = "audit-checkpoint"
"""The coordinator's newest signed audit checkpoint (one line of its ``checkpoints.jsonl``) in the ``config`` record."""
AUDIT_KEY = "audit-key"
"""The audit public key that signed it (raw Ed25519, base64) in the ``config`` record."""


@dataclass(frozen=True)
class WitnessCheckpoint:
    """The coordinator's newest signed audit checkpoint and its audit key, for the sites to witness.

    It rides in the ``config`` record the sites already receive (the identity
    query, every train message), so witnessing costs no extra round trip;
    the coordinator refreshes it between rounds. The site keeps what it
    receives in its witness file (:mod:`lifecycle.audit.witness`), which an
    auditor checks the registry against (``fedguard audit verify --witness``).
    """

    checkpoint: str
    public_key: str

    WHAT = "round configuration"

    def fields(self) -> dict[str, str]:
        return {AUDIT_CHECKPOINT: self.checkpoint, AUDIT_KEY: self.public_key}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> WitnessCheckpoint | None:
        """The checkpoint a ``config`` record carries, or None when it carries none (an older coordinator).

        Raises
        ------
        ProtocolError
            Only one of the two keys is present, or one is not text.
        """
        if AUDIT_CHECKPOINT not in record and AUDIT_KEY not in record:
            return None
        return cls(_str(record, AUDIT_CHECKPOINT, cls.WHAT), _str(record, AUDIT_KEY, cls.WHAT))


def round_of(config: Mapping[str, Any]) -> int | None:
    """The server round a ``config`` record names, or None when it names none."""
    return _int(config, SERVER_ROUND, "round configuration") if SERVER_ROUND in config else None


def clip_norm_of(config: Mapping[str, Any]) -> float | None:
    """The clipping bound a ``config`` record declares (clear updates only), or None."""
    return _float(config, CLIP_NORM, "round configuration") if CLIP_NORM in config else None


def identity_query(config: Mapping[str, Any]) -> ConfigRecord:
    """The pre-run identity query: the run's instructions (and any extra fields) as round 0."""
    return ConfigRecord({**dict(config), SERVER_ROUND: 0})


def _report_fields(record: Mapping[str, Any], what: str) -> tuple[str, str]:
    return _str(record, NAME, what), _str(record, MANIFEST, what)


@dataclass(frozen=True)
class IdentityReply:
    """A site's answer to the identity query: its reported name, data manifest, size, per-round DP cost, policy.

    ``plan.steps`` is the DP-SGD steps of *one round* (sent as ``steps-per-round``).
    The site's policy lets the coordinator refuse, before the first round, a
    job the site would refuse in it: ``require_protection`` (the site sends
    only masked or encrypted updates) and ``epsilon_cap`` (the record-level ε
    cap of its own ledger, when it set one). ``None``: the site did not say.
    """

    name: str
    manifest: str
    num_examples: int
    plan: RecordLevelReport | None = None
    require_protection: bool | None = None
    epsilon_cap: float | None = None

    WHAT = "identity reply"
    STEPS_PER_ROUND = "steps-per-round"
    REQUIRE_PROTECTION = "require-protection"
    EPSILON_CAP = "epsilon-cap"

    def fields(self) -> dict[str, Any]:
        values: dict[str, Any] = {NAME: self.name, MANIFEST: self.manifest, NUM_EXAMPLES: self.num_examples}
        if self.plan is not None:
            values.update(self.plan.to_fields(self.STEPS_PER_ROUND))
        if self.require_protection is not None:
            values[self.REQUIRE_PROTECTION] = self.require_protection
        if self.epsilon_cap is not None:
            values[self.EPSILON_CAP] = self.epsilon_cap
        return values

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(self.fields())

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> IdentityReply:
        w = cls.WHAT
        name, manifest = _report_fields(record, w)
        required = record.get(cls.REQUIRE_PROTECTION)
        if required is not None and not isinstance(required, bool):
            raise _wrong(cls.REQUIRE_PROTECTION, required, "true or false", w)
        return cls(name, manifest, _optional(record, NUM_EXAMPLES, _int, w, 0),
                   RecordLevelReport.from_fields(record, cls.STEPS_PER_ROUND), required,
                   _optional(record, cls.EPSILON_CAP, _float, w, None))


REFUSAL_PREFIX = "fedguard-refusal/1 "
"""How the ``reason`` of a fedguard error reply starts (Flower error replies carry no content)."""
REFUSAL_CODES: dict[str, str] = {
    "contract-mismatch": "the site's data does not fit the federation's model (columns, label, classes)",
    "data-invalid": "the site's data failed validation against its own schema",
    "budget-veto": "the site's privacy ledger vetoed the round (its cap would be passed)",
    "unprotected-refused": "the site sends only masked or encrypted updates",
    "identity": "the node is not the site it names",
    "site-config": "the site's configuration is unusable (node config, files)",
    "protocol": "the coordinator and the site speak different protocol versions",
    "crash": "the site's ClientApp failed",
    "not-connected": "the site is not connected",
    "no-answer": "the site did not answer in time",
    "update-rejected": "the coordinator rejected the site's update",
    "withdrawn": "the site withdrew its consent: the job excludes it (fedguard retrain)",
    "consent-withdrawn": "the site withdrew its consent as a whole (fedguard client withdraw --all)",
}
"""Every reason code, with what it means (docs/runs.md lists them for operators)."""
MAX_REFUSAL_MESSAGE = 240


@dataclass(frozen=True)
class SiteRefusal:
    """Why a site did not take part: a code of :data:`REFUSAL_CODES` and a one-line message without data.

    The site encodes it into the ``reason`` of a Flower error reply
    (:meth:`to_error`); the coordinator decodes it (:meth:`parse`). The
    message is authored text (column names, caps, the fix), never a value of
    a record: the site's log keeps the detail.
    """

    code: str
    message: str

    def __post_init__(self) -> None:
        if self.code not in REFUSAL_CODES:
            raise ProtocolError(f"unknown site refusal code '{self.code}'; known: {', '.join(REFUSAL_CODES)}")
        line = " ".join(self.message.split()) or REFUSAL_CODES[self.code]
        if len(line) > MAX_REFUSAL_MESSAGE:
            line = line[: MAX_REFUSAL_MESSAGE - 1] + "…"
        object.__setattr__(self, "message", line)

    def reason(self) -> str:
        """The error reply's ``reason``: prefix, code, message."""
        return f"{REFUSAL_PREFIX}{self.code}: {self.message}"

    def to_error(self, code: int) -> Error:
        """A Flower ``Error`` with Flower's error ``code`` and this refusal as its reason."""
        return Error(code=code, reason=self.reason())

    @classmethod
    def parse(cls, reason: str | None) -> SiteRefusal | None:
        """The refusal an error reason carries, or None when it is not one (another sender, another version)."""
        if not reason or not reason.startswith(REFUSAL_PREFIX):
            return None
        code, sep, message = reason[len(REFUSAL_PREFIX):].partition(": ")
        if not sep or code not in REFUSAL_CODES:
            return None
        return cls(code, message)

    @classmethod
    def of(cls, message: Message) -> SiteRefusal | None:
        """The refusal in an error reply, or None (no error, or an error that is not a fedguard refusal)."""
        return cls.parse(message.error.reason) if message.has_error() else None


_LINEAGE_KEYS = ("epsilon", "delta", "noise-multiplier", "sample-rate", STEPS, "max-grad-norm", "accountant",
                 "clipping")
_BOM_NAMES = {"noise-multiplier": "noise_multiplier", "sample-rate": "sample_rate", "max-grad-norm": "max_grad_norm"}


@dataclass(frozen=True)
class SiteReply:
    """The ``site`` record of a train reply: public metadata about the update, never the update.

    ``epsilon`` is the record-level ε the site's accountant has spent so far
    in this run; ``site_dp`` holds what ``privacy.site_dp`` applied (its
    ``site-dp-*`` fields, prefix removed) and ``ledger_epsilon`` what the
    site's own ledger has composed per DP kind (``privacy.ledger.guard``):
    those two are added by the site's mods after the app built the record.
    """

    name: str
    manifest: str
    secure_rng: bool = False
    device: str = ""
    epsilon: float | None = None
    max_grad_norm: float | None = None
    clipping: str | None = None
    dp: RecordLevelReport | None = None
    site_dp: Mapping[str, Any] = field(default_factory=dict)
    ledger_epsilon: Mapping[str, float] = field(default_factory=dict)

    WHAT = "site record"

    def to_record(self) -> ConfigRecord:
        values: dict[str, Any] = {NAME: self.name, MANIFEST: self.manifest, "secure-rng": self.secure_rng,
                                  "device": self.device}
        if self.dp is not None:
            values.update(self.dp.to_fields())
        for key, value in (("epsilon", self.epsilon), ("max-grad-norm", self.max_grad_norm),
                           ("clipping", self.clipping)):
            if value is not None:
                values[key] = value
        values.update({f"{SITE_FIELDS_PREFIX}{k}": v for k, v in self.site_dp.items()})
        values.update({f"{LEDGER_EPSILON}{k}": v for k, v in self.ledger_epsilon.items()})
        return ConfigRecord(values)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SiteReply:
        w = cls.WHAT
        name, manifest = _report_fields(record, w)
        secure_rng = record.get("secure-rng", False)
        if not isinstance(secure_rng, bool):
            raise _wrong("secure-rng", secure_rng, "true or false", w)
        return cls(
            name, manifest, secure_rng, _optional(record, "device", _str, w, ""),
            _optional(record, "epsilon", _float, w, None), _optional(record, "max-grad-norm", _float, w, None),
            _optional(record, "clipping", _str, w, None), RecordLevelReport.from_fields(record),
            {k.removeprefix(SITE_FIELDS_PREFIX): v for k, v in record.items() if k.startswith(SITE_FIELDS_PREFIX)},
            {k.removeprefix(LEDGER_EPSILON): _float(record, k, w) for k in record if k.startswith(LEDGER_EPSILON)},
        )

    @classmethod
    def of(cls, message: Message) -> SiteReply | None:
        """The reply's ``site`` record parsed, or None when it has none."""
        record = config_record(message.content, SITE_RECORD)
        return None if record is None else cls.from_record(record)

    def dp_report(self, site: str | None = None) -> DPReport:
        """The DP report to charge, to ``site`` (the enrolled identity) when given (coordinator side)."""
        return DPReport(site or self.name, self.manifest, self.dp)

    def lineage_dp(self) -> dict[str, Any]:
        """The record-level DP the lineage keeps per site (wire keys; :func:`bom_dp` renames them)."""
        values: dict[str, Any] = {"epsilon": self.epsilon, "max-grad-norm": self.max_grad_norm,
                                  "clipping": self.clipping, **(self.dp.to_fields() if self.dp else {})}
        return {key: values[key] for key in _LINEAGE_KEYS if values.get(key) is not None}


def lineage_report(dp: Mapping[str, Any]) -> RecordLevelReport | None:
    """The DP-SGD report inside a lineage entry (:meth:`SiteReply.lineage_dp`); None without DP-SGD."""
    return RecordLevelReport.from_fields(dp)


def with_steps(dp: Mapping[str, Any], report: RecordLevelReport) -> dict[str, Any]:
    """A lineage entry whose steps and ε are ``report``'s (a resumed run composes its segments so)."""
    return {**dp, STEPS: report.steps, "epsilon": report.history().epsilon()}


def bom_dp(dp: Mapping[str, Any]) -> dict[str, Any]:
    """A lineage entry under the ML-BOM's names (``noise_multiplier``, ``sample_rate``, …)."""
    return {_BOM_NAMES.get(k, k): v for k, v in dp.items()}


@dataclass(frozen=True)
class TrainMetrics:
    """The ``metrics`` record of a train reply (the example count is FedAvg's weight)."""

    num_examples: int
    train_loss: float

    def to_record(self) -> MetricRecord:
        return MetricRecord({NUM_EXAMPLES: self.num_examples, "train-loss": self.train_loss})

    @staticmethod
    def num_examples_of(record: Mapping[str, Any]) -> int:
        return _int(record, NUM_EXAMPLES, "metrics record")


@dataclass(frozen=True)
class EvaluateMetrics:
    """The ``metrics`` record of an evaluate reply (loss and accuracy on the site's own data)."""

    num_examples: int
    loss: float
    accuracy: float

    def to_record(self) -> MetricRecord:
        return MetricRecord({NUM_EXAMPLES: self.num_examples, "eval-loss": self.loss, "eval-acc": self.accuracy})


REFERENCE_RECORD = "reference"
"""The record of the reference exchange (:mod:`federation.reference_share`)."""
REFERENCE_MESSAGE_TYPE = "query.reference"
"""Flower message type of both stages of the reference exchange (offer, secure sum)."""
_EDGES = "reference-edges"
_EDGE_COUNTS = "reference-edge-counts"


def encode_edges(edges: Edges) -> dict[str, list[float] | list[int]]:
    """Flat lists for a Flower ``ConfigRecord`` (it holds no nested lists)."""
    return {_EDGES: [e for row in edges for e in row], _EDGE_COUNTS: [len(row) for row in edges]}


def decode_edges(record: Mapping[str, Any]) -> Edges | None:
    """The edges :func:`encode_edges` wrote into ``record``, or ``None`` if it holds none.

    Raises
    ------
    ProtocolError
        The flat lists do not describe edges (coordinator and site differ).
    """
    if _EDGES not in record or _EDGE_COUNTS not in record:
        return None
    flat = [float(e) for e in _list(record, _EDGES, float, "the reference request")]
    lengths = [int(n) for n in _list(record, _EDGE_COUNTS, int, "the reference request")]
    if sum(lengths) != len(flat) or any(n < 1 for n in lengths):
        raise ProtocolError("the reference edges in the request are malformed; coordinator and site differ")
    out, start = [], 0
    for n in lengths:
        out.append(tuple(flat[start : start + n]))
        start += n
    return tuple(out)


@dataclass(frozen=True)
class ReferenceRequest:
    """What the coordinator asks for: counts over ``edges``, protected at (ε, δ) through ``secure_sum``.

    Sent twice: ``stage = "offer"`` (take part or decline) and ``stage = "sum"``
    (the secure sum itself, beside the secure-sum protocol's own records).
    """

    edges: Edges
    epsilon: float
    delta: float
    secure_sum: str

    def to_record(self, stage: str) -> ConfigRecord:
        return ConfigRecord({"stage": stage, "epsilon": self.epsilon, "delta": self.delta,
                             "secure-sum": self.secure_sum, **encode_edges(self.edges)})

    @classmethod
    def from_message(cls, msg: Message) -> tuple[str, ReferenceRequest]:
        """The stage and the request a ``query.reference`` message carries.

        Raises
        ------
        ProtocolError
            The message holds no request, or a malformed one.
        """
        what = "the reference request"
        record = config_record(msg.content, REFERENCE_RECORD)
        edges = decode_edges(record) if record is not None else None
        if record is None or edges is None:
            raise ProtocolError("the reference request carries no bin edges; coordinator and site differ")
        return _str(record, "stage", what), cls(edges, _float(record, "epsilon", what), _float(record, "delta", what),
                                                _str(record, "secure-sum", what))


@dataclass(frozen=True)
class ReferenceAnswer:
    """A site's answer to the offer: whether it takes part, and why not (never data)."""

    accept: bool
    reason: str = ""

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({"accept": self.accept, "reason": self.reason})

    @classmethod
    def from_message(cls, msg: Message) -> ReferenceAnswer | None:
        """The answer in ``msg``, or ``None`` for an error reply or one without a usable answer."""
        record = None if msg.has_error() else config_record(msg.content, REFERENCE_RECORD)
        if record is None or not isinstance(record.get("accept"), bool):
            return None
        return cls(bool(record["accept"]), str(record.get("reason", "")))

