"""The audit trail: a hash chain in the registry (:mod:`.chain`), signed checkpoints outside it (:mod:`.checkpoints`).

The chain makes an edit, a deletion or a reordering of a past event
detectable; a signed checkpoint makes a *rewritten and rehashed* history
detectable too, because the rewriter cannot sign for the new hashes without
the audit key (``fedguard audit verify``); the sites' copies of the checkpoints
(:mod:`.witness`) make it detectable even for the holder of that key.
"""

from lifecycle.audit.chain import APPENDED, AUDIT_LOCK_KEY, GENESIS, AuditChainError, record, serialise, verify_chain

__all__ = ["APPENDED", "AUDIT_LOCK_KEY", "GENESIS", "AuditChainError", "record", "serialise", "verify_chain"]
