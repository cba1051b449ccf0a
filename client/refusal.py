"""Why a site refused or failed, told to the coordinator as a reason code and one line that carries no data.

:func:`refusal_mod` wraps the whole ClientApp (inside the site's audit mod,
which then records exactly what left). Whatever goes wrong below it becomes
an error reply whose ``reason`` is a :class:`federation.protocol.SiteRefusal`:

* an error whose message is *authored to carry no data* (a contract mismatch
  names columns and labels, a refused unprotected update names the setting to
  change) sends its message (:data:`PUBLIC_MESSAGES`);
* a bad data file sends the columns and kinds of its problems
  (:func:`client.data.data_refusal`, from ``site_data_mod``);
* every other exception sends its code and its *type* only, never its text
  (a ``ProtocolError`` quotes the value it did not expect; a library error
  may quote a cell);
* an error reply from an inner mod (the ledger's veto) is translated by its
  authored public reason, or reduced to its Flower error code.

The site's own log keeps the full detail (message and traceback).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from client import logger
from client.consent import ConsentWithdrawnError
from client.data import ContractMismatchError
from client.protection import UnprotectedUpdateRefused
from federation.protocol import ProtocolError, SiteRefusal
from lifecycle.errors import AuthError, ConfigurationError, FedguardError
from privacy.ledger.base import PrivacyBudgetExceeded
from privacy.ledger.guard import BUDGET_VETO, LEDGER_FAILED

PUBLIC_MESSAGES: dict[type[FedguardError], str] = {
    ContractMismatchError: "contract-mismatch",
    UnprotectedUpdateRefused: "unprotected-refused",
    ConsentWithdrawnError: "consent-withdrawn",
}
"""Errors whose messages are written to carry no data: sent as they are, under their code."""

VETO_REASONS: dict[str, str] = {BUDGET_VETO: "budget-veto", LEDGER_FAILED: "budget-veto"}
"""Public reasons of the inner mods' error replies (``privacy.ledger.guard``) and their codes."""

_GENERIC: tuple[tuple[type[Exception], str, str], ...] = (
    (PrivacyBudgetExceeded, "budget-veto", "the site's privacy budget would be exceeded"),
    (ProtocolError, "protocol", "the coordinator and the site run different fedguard versions"),
    (AuthError, "identity", "the site refused the coordinator's request"),
    (ConfigurationError, "site-config", "the site's configuration or data file is unusable"),
)


def refusal_of(exc: Exception) -> SiteRefusal:
    """The refusal the coordinator may learn for ``exc`` (see the module docstring)."""
    for kind, code in PUBLIC_MESSAGES.items():
        if isinstance(exc, kind):
            return SiteRefusal(code, str(exc))
    name = type(exc).__name__
    for base, code, text in _GENERIC:
        if isinstance(exc, base):
            return SiteRefusal(code, f"{text} ({name}; details in the site's log)")
    return SiteRefusal("crash", f"the site's ClientApp failed ({name}; details in the site's log)")


def translate(msg: Message, reply: Message) -> Message:
    """An inner mod's error reply to ``msg`` as a refusal (no error, or already a refusal: as it is)."""
    if not reply.has_error() or SiteRefusal.of(reply) is not None:
        return reply
    error = reply.error
    code = VETO_REASONS.get(error.reason or "")
    refusal = (SiteRefusal(code, error.reason or "") if code is not None else
               SiteRefusal("crash", f"a site mod refused the message (Flower error {error.code}; "
                                    "details in the site's log)"))
    return Message(refusal.to_error(int(error.code)), reply_to=msg)


def refusal_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Answer every failure below with a :class:`SiteRefusal`; the site's log keeps the detail."""
    try:
        reply = call_next(msg, context)
    except Exception as exc:  # noqa: BLE001 - every failure must become a refusal without data
        refusal = refusal_of(exc)
        logger.error("the site refused or failed the %s message (%s: %s)", msg.metadata.message_type,
                     refusal.code, refusal.message, exc_info=exc)
        return Message(refusal.to_error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION), reply_to=msg)
    translated = translate(msg, reply)
    if translated is not reply:
        logger.error("the site refused the %s message: %s", msg.metadata.message_type,
                     SiteRefusal.of(translated))
    return translated
