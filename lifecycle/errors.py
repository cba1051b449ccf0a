"""The one error hierarchy of fedguard.

Every error fedguard raises on purpose derives from :class:`FedguardError`, and
subclasses the builtin whose meaning fits, so callers may catch either. Each
error carries the exit code the CLI maps it to (documented in docs/cli.md) and a
message that says what is wrong and what to do about it::

    FedguardError (exit 1)
    ├── ConfigurationError (ValueError, exit 2)   bad argument, bad config value
    │   └── InputValidationError                  a request or record fails its schema
    ├── StateError (RuntimeError, exit 3)         FEDGUARD_HOME unusable, registry corrupt or
    │                                             foreign, signing key missing
    ├── NotFoundError (LookupError, exit 4)       unknown model, version, key or artifact
    ├── VerificationError (exit 5)                a signature or watermark does not verify
    │   ├── SignatureError
    │   ├── WatermarkError
    │   ├── ExportError                           the ONNX export does not reproduce the model
    │   └── PrivacyAuditFailed (in privacy.audit.errors)  an empirical ε lower bound above the ledger's ε
    ├── TrainingError (RuntimeError, exit 6)      a round aggregated nothing, a site failed
    │   ├── SitesUnavailableError (exit 9)        too few sites identified by the deadline
    │   └── RunStoppedError (exit 10)             an operator stopped the run ('fedguard run stop')
    ├── AuthError (PermissionError, exit 7)       missing, unknown or under-scoped credential
    │   └── CertificateRefusedError               the coordinator refused this site's certificate
    ├── GovernanceError (PermissionError, exit 11) a promotion refused by governance: failing gates,
    │                                             tainted lineage, too few signed approvals
    └── PrivacyBudgetExceeded (RuntimeError, exit 8, in privacy.ledger.base)  a site's cap would be passed

Packages subclass these for their own cases (``privacy.secagg.errors``,
``privacy.he.errors``, ``serving.guards.keys``, ``federation.schema.ContractMismatchError``)
so the mapping above still applies.

Why one root: the CLI and the serving tier translate exactly this hierarchy at
their boundary (one-line message and exit code; sanitized HTTP error) and let
anything else surface as a bug.
"""

from __future__ import annotations


class FedguardError(Exception):
    """Root of every deliberate fedguard error."""

    exit_code: int = 1


class ConfigurationError(FedguardError, ValueError):
    """An argument or configuration value is invalid."""

    exit_code = 2


class InputValidationError(ConfigurationError):
    """A record or request does not match the model's feature schema."""


class StateError(FedguardError, RuntimeError):
    """Persistent state (home directory, registry, keys) is unusable."""

    exit_code = 3


class NotFoundError(FedguardError, LookupError):
    """A named model, version, key or artifact does not exist."""

    exit_code = 4


class VerificationError(FedguardError):
    """An integrity or ownership check failed."""

    exit_code = 5


class SignatureError(VerificationError):
    """A model signature does not verify; the message names the file that differs.

    ``files`` lists the artifact's files that changed, appeared or vanished
    (empty when the signature itself or the key is at fault).
    """

    def __init__(self, message: str, *, files: list[str] | None = None) -> None:
        super().__init__(message)
        self.files: list[str] = list(files or [])


class WatermarkError(VerificationError):
    """A watermark is absent or not detected with the required confidence."""


class ExportError(VerificationError):
    """The model cannot be exported to ONNX, or the export's logits differ from the model's (parity check)."""


class TrainingError(FedguardError, RuntimeError):
    """Federated training could not produce a trustworthy model."""

    exit_code = 6


class SitesUnavailableError(TrainingError):
    """A run could not start: fewer sites were identified than it needs (the message names the missing ones)."""

    exit_code = 9


class RunStoppedError(TrainingError):
    """A run was stopped by an operator (``fedguard run stop``) before it finished."""

    exit_code = 10


class AuthError(FedguardError, PermissionError):
    """A credential is missing, unknown, revoked or lacks the needed scope."""

    exit_code = 7


class GovernanceError(FedguardError, PermissionError):
    """Governance refuses the action: a gate fails, the lineage holds withdrawn data, or approvals are missing.

    The message names every failing criterion; an approver's signed override
    (``--override``) is the only way past it, and is audited as such.
    """

    exit_code = 11


class CertificateRefusedError(AuthError):
    """The coordinator's gateway refused this site's certificate (revoked, unknown CA): the site agent stops."""
