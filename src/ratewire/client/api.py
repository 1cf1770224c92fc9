"""``ratewire.client.Client``: the stream and the REST API, typed, for agents and scripts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from ratewire.client.core import KEEP, ClientCore, rest_url_for
from ratewire.client.models import Gap, Snapshot, Update
from ratewire.client.sync import SyncClient

__all__ = ["KEEP", "Client", "rest_url_for"]


class Client(ClientCore):
    """The async client (:class:`~ratewire.client.core.ClientCore`), and one subscription
    for code without an event loop."""

    def subscribe_sync(
        self,
        topic: str,
        since: int | None = None,
        snapshot: bool = False,
        *,
        on_gap: Literal["yield", "raise"] = "yield",
        filter: str | None = None,
    ) -> Iterator[Update | Gap | Snapshot]:
        """:meth:`subscribe` for code without an event loop (scripts, notebooks): a plain
        iterator, served by a client of its own on a background thread."""
        return SyncClient(self.url, **self._options).subscribe(
            topic, since, snapshot, on_gap=on_gap, close_client=True, filter=filter
        )
