"""Walking the audit chain: ``ratewire audit verify``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson

from ratewire.audit.chain import AuditChain
from ratewire.audit.entry import AuditEntry, AuditQuery
from ratewire.audit.store import AuditStore

PAGE = 1000


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome: ``problem`` is None when the chain is intact."""

    checked: int
    first_seq: int
    last_seq: int
    problem: str | None = None


async def verify_chain(
    store: AuditStore,
    chain: AuditChain,
    *,
    anchor: tuple[int, str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Verdict:
    """Check every entry from the pruning checkpoint to the head.

    Caught: an entry changed (its MAC no longer matches), removed (a gap in ``seq``),
    reordered (MACs chain in ``seq`` order), entries added without the key, and the tail cut
    off (the head row names a later entry than the last one present). A writer who rewinds
    the head row together with the tail is caught only by an ``anchor`` recorded earlier
    elsewhere (``ratewire audit anchor``; an export to a SIEM is one too): the entry at the
    anchor's ``seq`` must still carry the anchor's MAC.
    """
    head = await store.audit_head()
    previous_seq, previous_mac = head.pruned_seq, head.pruned_mac
    checked = 0
    first = head.pruned_seq + 1
    anchor_seen = anchor is None or anchor[0] <= head.pruned_seq
    checkpoint_seen = head.pruned_seq == 0
    while True:
        page = await store.audit_entries(
            AuditQuery(after_seq=previous_seq, limit=PAGE, oldest_first=True)
        )
        if not page:
            break
        for entry in page:
            problem = _check(chain, entry, previous_seq, previous_mac)
            if problem is not None:
                return Verdict(checked, first, previous_seq, problem)
            if anchor is not None and entry.seq == anchor[0]:
                if entry.mac != anchor[1]:
                    return Verdict(
                        checked, first, previous_seq, f"entry #{entry.seq} differs from the anchor"
                    )
                anchor_seen = True
            if entry.action == "audit.pruned" and _names_checkpoint(
                entry, head.pruned_seq, head.pruned_mac
            ):
                checkpoint_seen = True
            previous_seq, previous_mac = entry.seq, entry.mac
            checked += 1
        if progress is not None:
            progress(checked)
    if previous_seq != head.seq or previous_mac != head.mac:
        return Verdict(
            checked,
            first,
            previous_seq,
            f"the log ends at entry #{previous_seq} but the head names entry #{head.seq}: "
            "entries were removed from the end",
        )
    if not anchor_seen and anchor is not None:
        return Verdict(checked, first, previous_seq, f"anchor entry #{anchor[0]} is missing")
    if not checkpoint_seen:
        return Verdict(
            checked,
            first,
            previous_seq,
            f"the pruning checkpoint (#{head.pruned_seq}) is not recorded by an audit.pruned entry",
        )
    return Verdict(checked, first, previous_seq)


def _check(
    chain: AuditChain, entry: AuditEntry, previous_seq: int, previous_mac: str
) -> str | None:
    if entry.seq != previous_seq + 1:
        return f"entry #{previous_seq + 1} is missing (the next entry present is #{entry.seq})"
    if not chain.verifies(previous_mac, entry):
        return (
            f"entry #{entry.seq} ({entry.action}) does not match its MAC: changed, moved or forged"
        )
    return None


def _names_checkpoint(entry: AuditEntry, seq: int, mac: str) -> bool:
    detail = orjson.loads(entry.detail_text)
    return bool(detail.get("throughSeq") == seq and detail.get("throughMac") == mac)
