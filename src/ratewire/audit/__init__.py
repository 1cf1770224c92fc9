"""The audit log: what changed and who tried what, tamper-evident (see audit.chain)."""

from ratewire.audit.chain import GENESIS, AuditChain
from ratewire.audit.entry import AuditContext, AuditEntry, AuditQuery, AuditRecord

__all__ = ["GENESIS", "AuditChain", "AuditContext", "AuditEntry", "AuditQuery", "AuditRecord"]
