"""Who may subscribe to (or read the history of) which topic (docs/protocol.md)."""

from __future__ import annotations

from fnmatch import fnmatchcase

from ratewire.domain import Topic, TopicKind
from ratewire.security.tokens import Principal


def may_subscribe(principal: Principal, topic: Topic) -> bool:
    """Global and game topics: any valid token; a user topic: that user, or ``ratings:admin``.

    A token with a ``topics`` claim is further limited to the names matching its patterns
    (``*`` matches anything, as in ``rating.game.*``).
    """
    if principal.topics is not None and not any(
        fnmatchcase(topic.name, pattern) for pattern in principal.topics
    ):
        return False
    if topic.kind is TopicKind.USER:
        return topic.key == principal.sub or principal.is_admin
    return True
