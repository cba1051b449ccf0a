"""Why a site's reply failed, in words an operator reads: a reason code and one line, by site name.

A fedguard site answers every refusal or failure with a
:class:`federation.protocol.SiteRefusal` in its error reply
(``client.refusal``); the coordinator's own refusals (an update rejected by
validation, a node refused for its identity) and Flower's (the node went
away, no reply in time) are named here too. Any other error reason (a site of
another version, Flower's ``<class '...'>:<'...'>`` text) is never shown: it
may be a Python repr, or quote what it should not, so only its Flower error
code is.
"""

from __future__ import annotations

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode

from coordinator.strategies.validation import UPDATE_REJECTED
from federation.protocol import SiteRefusal

IDENTITY_REFUSED = 4002
"""Error code of a reply refused because its node is not the site it names (``coordinator.identity``)."""

UNNAMED = "an unidentified site"
"""How a node without an enrolled identity is named to the operator (never by its Flower node id)."""

_FLOWER: dict[int, SiteRefusal] = {
    ErrorCode.NODE_UNAVAILABLE: SiteRefusal("not-connected",
                                              "the site went offline (its agent stopped or lost the connection)"),
    ErrorCode.MESSAGE_UNAVAILABLE: SiteRefusal("no-answer", "the site did not receive the message in time"),
    ErrorCode.REPLY_MESSAGE_UNAVAILABLE: SiteRefusal("no-answer", "the site did not answer in time"),
    ErrorCode.LOAD_CLIENT_APP_EXCEPTION: SiteRefusal("crash", "the site could not load its ClientApp"),
    ErrorCode.CLIENT_APP_CRASHED: SiteRefusal("crash", "the site's ClientApp process crashed"),
}


def reason_of(error: Error) -> SiteRefusal:
    """The refusal an error reply stands for (see the module docstring)."""
    refusal = SiteRefusal.parse(error.reason)
    if refusal is not None:
        return refusal
    code = int(error.code)
    if code == UPDATE_REJECTED:
        return SiteRefusal("update-rejected", error.reason or "")  # the coordinator's own words
    if code == IDENTITY_REFUSED:
        return SiteRefusal("identity", error.reason or "")
    if code in _FLOWER:
        return _FLOWER[code]
    return SiteRefusal("crash", f"the site failed without a fedguard reason (Flower error {code}); "
                                "see the site's log")


def reply_reason(reply: Message) -> SiteRefusal | None:
    """The refusal of an error reply; None for a reply that is not an error."""
    return reason_of(reply.error) if reply.has_error() else None


def describe(name: str, refusal: SiteRefusal) -> str:
    """``"kings: the site's data does not match …"``: the line an operator reads."""
    return f"{name}: {refusal.message}"
