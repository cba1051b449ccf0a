"""Errors of the homomorphic mode, placed in fedguard's one hierarchy.

::

    StateError
    └── HEKeyError              a context file is missing, corrupt, or held by the wrong party
    InputValidationError
    └── HEPayloadError          a ciphertext or an ``"he"`` record is malformed or mismatched
    AuthError
    └── DecryptionRefused       a site refuses to decrypt what may not be an aggregate
    TrainingError
    └── HEAggregationError      a round cannot produce a trustworthy encrypted aggregate
"""

from __future__ import annotations

from lifecycle.errors import AuthError, InputValidationError, StateError, TrainingError


class HEKeyError(StateError):
    """A CKKS context is unusable here (missing, corrupt, secret on the coordinator, public at a site)."""


class HEPayloadError(InputValidationError):
    """A ciphertext or ``"he"`` instruction record is malformed or made under another key."""


class DecryptionRefused(AuthError):
    """A site refused to decrypt: the request does not show an aggregate of enough sites."""


class HEAggregationError(TrainingError):
    """Too few encrypted contributions, no decryptor answered, or decryptors disagreed."""
