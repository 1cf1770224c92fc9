"""One order of an audit entry's fields (AUDIT_FIELDS) serves the chain's MAC and the SQL
stores' rows: these pin both, so a change to the order shows here before it breaks a stored
chain or a PostgreSQL flush."""

from __future__ import annotations

from sqlalchemy import MetaData

from ratewire.audit import AuditChain, AuditContext, AuditRecord
from ratewire.audit.entry import AUDIT_FIELDS
from ratewire.storage.sql.audit import AuditTables

RECORD = AuditRecord(
    "rating.update",
    1765000000123,
    AuditContext("alice", "ratings:write", "10.0.0.7", "req-1"),
    "r_01",
    {"before": {"score": 3}, "after": {"score": 5}, "eventSeq": 42, "note": 'é\n"x"'},
)


def test_audit_log_columns_follow_the_entry_fields() -> None:
    columns = list(AuditTables(MetaData()).log.columns.keys())
    assert columns == [name.removesuffix("_text") for name in AUDIT_FIELDS]


def test_macs_are_those_of_the_stored_chains() -> None:
    # Computed by the code before the field order had one definition: a stored chain must
    # still verify.
    assert AuditChain(None).seal("0" * 64, 7, RECORD).mac == (
        "ff0507fd66e70222fa33d7fbac053a967461d547d481284b0dc9e69d49eb8e4e"
    )
    assert AuditChain("k3y").seal("0" * 64, 7, RECORD).mac == (
        "ebd394f30baa9bea7542db0a4d7e4cac79352b638d646d72e462684f176f3481"
    )


def test_values_are_the_fields_in_order() -> None:
    entry = AuditChain(None).seal("0" * 64, 7, RECORD)
    assert entry.values() == tuple(getattr(entry, name) for name in AUDIT_FIELDS)
