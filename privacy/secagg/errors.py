"""Errors of the secure-aggregation protocol, placed in fedguard's one hierarchy.

::

    ConfigurationError
    └── SecAggConfigError              a configuration that could overflow or is unsafe
        └── SecAggRequiredError        a train message without SecAgg+ reached a protected site
    TrainingError
    └── SecAggAbortedError             too few sites survived a stage: the round fails, nothing is aggregated
    VerificationError
    └── SecAggProtocolError            a message is malformed, out of order, replayed, for another round
        └── SecAggAuthenticationError  a ciphertext or a reconstructed secret fails authentication
"""

from __future__ import annotations

from lifecycle.errors import ConfigurationError, TrainingError, VerificationError


class SecAggConfigError(ConfigurationError):
    """The SecAgg+ parameters are inconsistent, unsafe, or could overflow the modulus."""


class SecAggRequiredError(SecAggConfigError):
    """A site that installed the SecAgg+ mod was asked to train without the protocol."""


class SecAggAbortedError(TrainingError):
    """Too few sites survived a stage of the protocol; the round is abandoned.

    Nothing partial is returned: no aggregate, no unmasked vector.
    """


class SecAggProtocolError(VerificationError, ValueError):
    """A protocol message is malformed, out of order, replayed, or for another round."""


class SecAggAuthenticationError(SecAggProtocolError):
    """A ciphertext, a share or a reconstructed secret fails authentication."""
