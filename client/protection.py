"""Which protection a site applies to its update, chosen by the coordinator's message, bounded by the site.

The coordinator names the mechanism in each train message (a ``"secagg"``
record for SecAgg+, an ``"he"`` record for CKKS). This mod routes the message
to that mechanism's own mod; each of those refuses to send anything but a
masked or encrypted payload. A train message naming no mechanism is refused
when the site requires protection (the default for a deployed site agent):
a site never sends a clear update because a coordinator asked for one.
Site-level DP (``privacy.site_dp.site_dp_mod``) sits *inside* this mod, so
noise is added before masking or encryption.

A clear update (only where the site allows it) is clipped to the bound the
coordinator declares in the train config (``clip-norm``), as the secure mods
clip theirs: the coordinator rejects clear updates above that bound
(``coordinator.strategies.validation``), so an honest site never is.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod

from federation.protocol import CLIP_NORM, CONFIG_RECORD, clip_norm_of
from lifecycle.errors import AuthError
from privacy.he import ckks_mod
from privacy.he.instruction import HE_RECORD
from privacy.records import config_record, required_arrays
from privacy.secagg.messages import RECORD_KEY as SECAGG_RECORD
from privacy.secagg.mod import secaggplus_mod
from privacy.updates import clip, flatten, model_delta, unflatten

MECHANISMS: dict[str, Callable[[Message, Context, ClientAppCallable], Message]] = {
    SECAGG_RECORD: secaggplus_mod,
    HE_RECORD: ckks_mod,
}
REQUIRE_KEY = "require-secure-aggregation"
CLIP_KEY = CLIP_NORM


class UnprotectedUpdateRefused(AuthError):
    """The coordinator asked for a clear update from a site that requires protection."""


def make_protection_mod(*, require_protection: bool) -> Mod:
    """The routing mod; ``require_protection`` is the default a node config may override."""

    def protection_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        for key, mechanism in MECHANISMS.items():
            if config_record(msg.content, key) is not None:
                return mechanism(msg, context, call_next)
        required = context.node_config.get(REQUIRE_KEY, require_protection)
        if required:
            raise UnprotectedUpdateRefused(
                "the coordinator asked for an unprotected update; this site sends only masked or "
                "encrypted updates (set secure-aggregation to secagg+ or ckks)"
            )
        return clip_clear_update(msg, call_next(msg, context))

    return protection_mod


def clip_clear_update(msg: Message, reply: Message) -> Message:
    """Scale a clear reply's update ``local − global`` to the train config's ``clip-norm``, if it names one."""
    config = config_record(msg.content, CONFIG_RECORD)
    bound = clip_norm_of(config) if config is not None else None
    if reply.has_error() or bound is None or "arrays" not in reply.content:
        return reply
    global_arrays = required_arrays(msg.content, "arrays")
    clipped, norm = clip(model_delta(required_arrays(reply.content, "arrays"), global_arrays), bound)
    if norm <= bound:
        return reply
    base, layout = flatten(global_arrays)
    content = RecordDict(dict(reply.content.items()))
    content["arrays"] = unflatten(base + clipped, layout)
    return Message(content=content, reply_to=msg)
