"""The coordinator side of the CKKS mode: a strategy wrapper that only adds ciphertexts.

:class:`CKKSStrategy` wraps any Message-API strategy whose aggregate is a
weighted mean (``FedAvg`` and the server optimizers built on it):

1. ``configure_train`` lets the inner strategy sample sites and build its
   messages, then adds the ``"he"`` record (stage ``encrypt``).
2. ``aggregate_train`` parses each reply's ciphertext with the *public*
   context, checks there are at least ``min_sites``, adds them, and sends the
   sum (stage ``decrypt``) to ``decryptors`` of the contributing sites over the
   same grid; their plaintext sums must agree.
3. ``apply_payload_sum`` turns ``[Σ w·Δ, Σ w]`` into the new global model,
   which the inner strategy receives as one synthetic reply weighted Σw, so
   FedAvg returns it unchanged and server optimizers (FedAdam, …) step on it.

The coordinator never sees one site's update in the clear, and nothing
partial is ever used: too few contributions raise
:class:`~privacy.he.errors.HEAggregationError`.

Notes
-----
Robust aggregators (Krum, median, trimmed mean) need per-site updates and
cannot run under encryption; wrapping them averages instead. Design after
Aono et al. 2017, "Privacy-Preserving Deep Learning via Additively
Homomorphic Encryption".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from privacy import logger
from privacy.he.backend import Ciphertext, create_backend
from privacy.he.codec import ciphertext_record, read_ciphertext, read_sum
from privacy.he.errors import HEAggregationError, HEPayloadError
from privacy.he.instruction import CIPHERTEXT_RECORD, HE_RECORD, SUM_RECORD, HEInstruction, Weighting
from privacy.he.mod import SECRET_CONTEXT_KEY
from privacy.records import config_record, metric_record
from privacy.strategy_wrapper import StrategyWrapper
from privacy.updates import apply_payload_sum, layout_of

RepliesCallback = Callable[[int, list[Message]], None]


class CKKSStrategy(StrategyWrapper):
    """Aggregate CKKS-encrypted payloads; let ``inner`` do sampling, evaluation and the update rule.

    Parameters
    ----------
    inner : Strategy
        The wrapped Message-API strategy (``FedAvg`` or a subclass).
    public_context_path : Path
        The coordinator's public context; a context holding the secret key is refused.
    min_sites : int
        Fewest valid encrypted contributions a round may aggregate (also sent to
        sites, which refuse to decrypt fewer).
    clip_norm : float
        C: each site clips its update to ‖Δ‖₂ ≤ C before encrypting.
    max_weight : float
        W: a site's weight is its num-examples; a site with more than W refuses to send.
    weighting : {"examples", "uniform"}
        Weight by example count (FedAvg) or count every site once.
    decryptors : int
        How many contributing sites decrypt the sum; with more than one, their
        results must agree.
    on_replies : callable, optional
        ``on_replies(server_round, valid_replies)`` with the sites' encrypted
        replies (their ``metrics`` and ``site`` records are public metadata).
    timeout : float
        Seconds to wait for decryption replies.
    backend : str
        Registry name of the homomorphic backend.

    Notes
    -----
    After each aggregate, ``contributors`` holds the nodes whose ciphertexts
    were added and ``total_weight`` their ``Σw``. With ``required_contributors``
    set, a round sums exactly those nodes or nothing (checked *before* the sum
    is sent for decryption), as a retry of a rejected round needs: two sums
    over sets that differ by one site disclose that site's update.
    """

    def __init__(
        self, inner: Strategy, public_context_path: Path, *, min_sites: int, clip_norm: float,
        max_weight: float = 1_000_000.0, weighting: Weighting = "examples", decryptors: int = 1,
        on_replies: RepliesCallback | None = None, timeout: float = 600.0, backend: str = "ckks",
    ) -> None:
        super().__init__(inner)
        self.backend = create_backend(backend, Path(public_context_path), role="coordinator")
        if decryptors < 1 or min_sites < 1:
            raise HEPayloadError("decryptors and min_sites must be at least 1")
        self.template = HEInstruction("encrypt", 0, float(clip_norm), float(max_weight), weighting,
                                      int(min_sites), self.backend.key_id, backend)
        self.max_contributors = int(self.backend.max_abs // self.template.bound) - 1
        if self.max_contributors < min_sites:
            raise HEPayloadError(f"clip-norm × max-weight = {self.template.bound:g} leaves CKKS headroom for only "
                                 f"{self.max_contributors} sites; lower them")
        self.decryptors = decryptors
        self.on_replies = on_replies
        self.timeout = timeout
        self._grid: Grid | None = None
        self._global: ArrayRecord | None = None
        self._site_config = ConfigRecord({})
        self.contributors: frozenset[int] = frozenset()
        self.total_weight = 0.0
        self.required_contributors: frozenset[int] | None = None

    @property
    def min_sites(self) -> int:
        return self.template.min_sites

    def summary(self) -> None:
        logger.info("CKKS secure aggregation (key %s, min %d sites, %d decryptor(s)) around:",
                    self.backend.key_id, self.min_sites, self.decryptors)
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._grid, self._global = grid, arrays
        # Simulation passes the sites' secret-context path in the train config; decrypt requests carry it too.
        self._site_config = ConfigRecord({k: config[k] for k in (SECRET_CONTEXT_KEY,) if k in config})
        record = replace(self.template, server_round=server_round).to_record()
        self.contributors, self.total_weight = frozenset(), 0.0
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        if self.required_contributors is not None:
            messages = [m for m in messages if m.metadata.dst_node_id in self.required_contributors]
            if {m.metadata.dst_node_id for m in messages} != self.required_contributors:
                raise HEAggregationError(f"round {server_round}: not every site this round must sum was sampled; "
                                         "nothing was sent")
        for message in messages:
            message.content[HE_RECORD] = record
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._global is None or self._grid is None:
            raise HEAggregationError("aggregate_train before configure_train: no global model to update")
        length = layout_of(self._global).size + 2
        valid, ciphertexts = self._collect(server_round, list(replies), length)
        if len(valid) < self.min_sites:
            raise HEAggregationError(
                f"round {server_round}: {len(valid)} valid encrypted update(s), fewer than the {self.min_sites} "
                "required; nothing was aggregated — check the sites' logs, or lower min-sites"
            )
        if len(valid) > self.max_contributors:
            raise HEAggregationError(f"round {server_round}: {len(valid)} contributions exceed the CKKS headroom "
                                     f"({self.max_contributors}); lower max-weight or clip-norm")
        nodes = frozenset(m.metadata.src_node_id for m in valid)
        if self.required_contributors is not None and nodes != self.required_contributors:
            raise HEAggregationError(f"round {server_round}: the valid contributions come from other sites than "
                                     "this round must sum; nothing was decrypted (a sum over other sites than the "
                                     "rejected attempt's would disclose the difference)")
        total = self._decrypt(server_round, self.backend.add(ciphertexts), sorted(nodes))
        new_global, weight = apply_payload_sum(total, self._global)
        self.contributors, self.total_weight = nodes, weight
        if self.on_replies is not None:
            self.on_replies(server_round, valid)
        metrics = MetricRecord({"num-examples": weight, **_mean_metrics(valid)})
        synthetic = Message(RecordDict({"arrays": new_global, "metrics": metrics}),
                            dst_node_id=0, message_type=MessageType.TRAIN, group_id=str(server_round))
        return self.inner.aggregate_train(server_round, [synthetic])


    def _collect(self, server_round: int, replies: list[Message],
                 length: int) -> tuple[list[Message], list[Ciphertext]]:
        valid, ciphertexts = [], []
        for message in replies:
            node = message.metadata.src_node_id
            if message.has_error():
                logger.warning("round %d: node %d failed: %s", server_round, node, message.error.reason)
                continue
            try:
                ciphertexts.append(self._parse(message, length))
                valid.append(message)
            except HEPayloadError as exc:
                logger.warning("round %d: node %d sent an unusable encrypted update: %s", server_round, node, exc)
        return valid, ciphertexts

    def _parse(self, message: Message, length: int) -> Ciphertext:
        content = message.content
        if "arrays" in content.array_records:
            raise HEPayloadError("the reply carries clear weights; it was discarded unread")
        meta = config_record(content, HE_RECORD)
        if meta is None or CIPHERTEXT_RECORD not in content.array_records:
            raise HEPayloadError("the reply has no 'he' record or no ciphertext")
        if str(meta.get("key-id")) != self.backend.key_id or str(meta.get("length")) != str(length):
            raise HEPayloadError("the ciphertext was made under another key or for another model size")
        return read_ciphertext(self.backend, content.array_records[CIPHERTEXT_RECORD], length)

    def _decrypt(self, server_round: int, total: Ciphertext, candidates: Sequence[int]) -> np.ndarray:
        """Ask contributing sites (rotating by round) to decrypt the sum until ``decryptors`` agree."""
        assert self._grid is not None
        request = replace(self.template, server_round=server_round)
        content = RecordDict({
            HE_RECORD: request.for_decryption(len(candidates), total.length).to_record(),
            CIPHERTEXT_RECORD: ciphertext_record(self.backend, total),
            "config": ConfigRecord({**self._site_config, "server-round": server_round}),
        })
        start = server_round % len(candidates)
        queue = list(candidates[start:]) + list(candidates[:start])
        sums: list[np.ndarray] = []
        while len(sums) < self.decryptors and queue:
            batch, queue = queue[: self.decryptors - len(sums)], queue[self.decryptors - len(sums):]
            messages = [Message(content, dst_node_id=node, message_type=MessageType.TRAIN,
                                group_id=str(server_round)) for node in batch]
            for reply in self._grid.send_and_receive(messages, timeout=self.timeout):
                try:
                    if reply.has_error():
                        raise HEPayloadError(reply.error.reason)
                    sums.append(read_sum(reply.content.array_records[SUM_RECORD]))
                except (HEPayloadError, KeyError) as exc:
                    logger.warning("round %d: node %d did not decrypt: %s",
                                   server_round, reply.metadata.src_node_id, exc)
        if len(sums) < self.decryptors:
            raise HEAggregationError(f"round {server_round}: only {len(sums)} of {self.decryptors} decryptor(s) "
                                     "returned the aggregate; nothing was aggregated")
        for other in sums[1:]:
            if other.shape != sums[0].shape or not np.allclose(other, sums[0], rtol=1e-9, atol=1e-12):
                raise HEAggregationError(f"round {server_round}: decrypting sites returned different aggregates; "
                                         "a site or the key material is faulty — nothing was aggregated")
        if sums[0].shape != (total.length - 1,):
            raise HEAggregationError(f"round {server_round}: the decrypted aggregate has the wrong size")
        return sums[0]


def _mean_metrics(replies: list[Message]) -> dict[str, float]:
    """Example-weighted mean of the sites' public scalar metrics (e.g. train-loss)."""
    weights, sums = 0.0, dict[str, float]()
    for message in replies:
        metrics = metric_record(message.content, "metrics")
        if metrics is None:
            continue
        weight = float(metrics.get("num-examples", 0))  # type: ignore[arg-type]
        weights += weight
        for key, value in metrics.items():
            if key != "num-examples" and isinstance(value, (int, float)):
                sums[key] = sums.get(key, 0.0) + weight * float(value)
    return {key: value / weights for key, value in sums.items()} if weights > 0 else {}
