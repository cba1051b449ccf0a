"""Attacks as site behaviours: the Flower client mods that turn chosen virtual sites into attackers.

:func:`attack_mods` gives two mods for ``client.app.make_client_app``:

* ``update`` (``update_mods=[...]``: inside the protection mod, on the train
  path only): a data attack points the site at its poisoned copy of its file
  (:mod:`simulations.attacks.data`) before training; a model attack rewrites
  the trained update ``Δ = local − global`` after training. The protection mod
  outside it then clips, masks or encrypts what the attacker produced, as for
  any site: attackers follow the protocol.
* ``site`` (``mods=[...]``: outside the protection mod): an attacker with
  ``clip=skip`` ignores the coordinator's clipping instruction
  (:mod:`simulations.attacks.unclipped`); any other message passes unchanged.

Which sites attack: :func:`select_attackers`, a seeded choice of
``⌈fraction · n⌉`` partition ids; every other site runs the honest code path.
Randomness per attacker and round is seeded from the experiment seed, the
site's partition id and the round, so a run is repeatable.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod

from client.config import SiteIdentity, site_name
from federation.protocol import CONFIG_RECORD, TrainConfig
from lifecycle.errors import ConfigurationError
from privacy.records import required_config
from privacy.updates import flatten, model_delta, unflatten
from simulations import logger
from simulations.attacks.base import Attack, Records
from simulations.attacks.data import SiteFile, bootstrap_copy, poisoned_copy
from simulations.attacks.unclipped import skip_clipping

_POISON, _CRAFT, _BOOTSTRAP = 1, 2, 3  # streams of the per-site generator


def select_attackers(sites: int, fraction: float, seed: int) -> frozenset[int]:
    """``⌈fraction · sites⌉`` partition ids chosen uniformly with ``seed`` (none for fraction 0)."""
    if not 0 <= fraction <= 1 or not math.isfinite(fraction):
        raise ConfigurationError(f"--attackers {fraction}: use a fraction of the sites between 0 and 1")
    count = math.ceil(fraction * sites - 1e-9)
    chosen = np.random.default_rng([seed, 0xA77AC]).choice(sites, size=count, replace=False)
    return frozenset(int(i) for i in chosen)


@dataclass(frozen=True)
class AttackMods:
    """The two mods of one attack: ``site`` for ``mods=``, ``update`` for ``update_mods=``."""

    site: Mod
    update: Mod


def partition_of(context: Context) -> int | None:
    """The virtual site's partition id (None for a site without one)."""
    value = context.node_config.get("partition-id")
    return int(value) if value is not None else None


def standardization(arrays: ArrayRecord) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The global model's input ``Standardize`` buffers (``0.mean``, ``0.scale``), if it has them."""
    if "0.mean" in arrays and "0.scale" in arrays:
        return np.asarray(arrays["0.mean"].numpy()), np.asarray(arrays["0.scale"].numpy())
    return None, None


def with_data(context: Context, path: str, name: str, state: RecordDict | None = None) -> Context:
    """``context`` with the node config's ``data-path`` at ``path``, the site's name kept."""
    node_config = {**context.node_config, "data-path": path, "site-name": name}
    return Context(context.run_id, context.node_id, node_config, context.state if state is None else state,
                   context.run_config)


class _Attacker:
    """One attacker's view of a train message: its file, its records, its generators."""

    def __init__(self, attack: Attack, msg: Message, context: Context, partition: int) -> None:
        self.attack, self.msg, self.context = attack, msg, context
        self.cfg = TrainConfig.from_record(required_config(msg.content, CONFIG_RECORD))
        self.site = SiteIdentity.from_context(context, self.cfg)
        self.name = site_name(context.node_config)
        self.global_arrays = msg.content.array_records["arrays"]
        seed = attack.setting.seed
        self.rng = {stream: np.random.default_rng([seed, partition, stream, *extra])
                    for stream, extra in ((_POISON, ()), (_CRAFT, (self.cfg.server_round,)),
                                          (_BOOTSTRAP, (self.cfg.server_round,)))}
        self._file: SiteFile | None = None
        self.records: Records | None = None

    def file(self) -> SiteFile:
        if self._file is None:
            self._file = SiteFile(self.site.data_path, self.cfg.features, self.cfg.target)
            mean, scale = standardization(self.global_arrays)
            self.records = self._file.records(self.cfg.spec.num_classes, mean, scale)
        return self._file

    def poisoned_context(self) -> Context:
        """The context that makes the site train on its poisoned copy."""
        site = self.file()
        assert self.records is not None
        path, self.records = poisoned_copy(site, self.attack, self.records, self.rng[_POISON])
        return with_data(self.context, str(path), self.name)

    def bootstrap(self, count: int) -> list[np.ndarray]:
        """``count`` honest updates from the same global model, each on a resample of the site's records."""
        from client.app import train  # the site's own training, off the record: no ledger, no noise, not sent

        site = self.file()
        assert self.records is not None
        updates = []
        for i in range(count):
            path = bootstrap_copy(site, self.records, self.rng[_BOOTSTRAP], f"{self.cfg.server_round}-{i}")
            scratch = with_data(self.context, str(path), self.name, copy.deepcopy(self.context.state))
            reply = train(self.msg, scratch)
            updates.append(model_delta(reply.content.array_records["arrays"], self.global_arrays))
        return updates

    def crafted(self, reply: Message) -> Message:
        """``reply`` with its update replaced by :meth:`Attack.craft` of it."""
        delta = model_delta(reply.content.array_records["arrays"], self.global_arrays)
        crafted = self.attack.craft(delta, self.bootstrap, self.rng[_CRAFT])
        base, layout = flatten(self.global_arrays)
        content = RecordDict(dict(reply.content.items()))
        content["arrays"] = unflatten(base + crafted, layout)
        return Message(content=content, reply_to=self.msg)


def attack_mods(attack: Attack, attackers: frozenset[int]) -> AttackMods:
    """The mods that make the sites with partition ids in ``attackers`` run ``attack`` (see the module docstring)."""

    def update_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        partition = partition_of(context)
        if msg.metadata.message_type != MessageType.TRAIN or partition not in attackers:
            return call_next(msg, context)
        attacker = _Attacker(attack, msg, context, partition)
        down = attacker.poisoned_context() if attack.data_attack else context
        reply = call_next(msg, down)
        if reply.has_error() or not attack.model_attack:
            return reply
        logger.info("site %s (partition %d) sends a %s update", attacker.name, partition, attack.name)
        return attacker.crafted(reply)

    def site_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if (not attack.skips_clipping or msg.metadata.message_type != MessageType.TRAIN
                or partition_of(context) not in attackers):
            return call_next(msg, context)
        return skip_clipping(msg, context, call_next)

    return AttackMods(site_mod, update_mod)
