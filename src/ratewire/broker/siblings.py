"""Commit notices between the workers of one host (``serve --workers N`` with the in-process
broker): each worker tells the others about every event it commits, so their subscribers get it
at once instead of at the relay's next poll of the store.

Each worker binds a Unix datagram socket in a directory the supervisor gives them all
(``RATEWIRE_WORKER_NOTIFY_DIR``) and sends each committed event, encoded as the Redis broker
encodes it, to every other worker's socket. A notice is a hint, never the source of truth: the
store's outbox is. A notice that cannot be sent (the peer's queue is full, the peer is
restarting) is dropped; the peer's relay then sees the next event arrive after a gap and reads
the store from its cursor, or finds the event at its next poll. Order and exactly-once are the
relay's, as for its own commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from ratewire.broker.event_codec import decode_event, encode_event
from ratewire.domain import RatingEvent

log = logging.getLogger("ratewire.siblings")
NOTIFY_DIR_ENV = "RATEWIRE_WORKER_NOTIFY_DIR"
WORKER_INDEX_ENV = "RATEWIRE_WORKER_INDEX"
#: A Unix socket path longer than this cannot be bound (sun_path is 108 bytes with its NUL).
MAX_SOCKET_PATH = 100
#: How often the list of sibling sockets is read again (workers restart under new sockets).
PEERS_REFRESH_SECONDS = 1.0
#: The largest notice accepted; a rating event is well under 4 KiB.
MAX_NOTICE_BYTES = 64 * 1024


class SiblingNotices:
    """This worker's end of the notice channel."""

    def __init__(self, directory: str | Path, name: str) -> None:
        self._directory = Path(directory)
        # Short: a Unix socket's whole path must fit in 107 bytes.
        self._path = self._directory / f"w{name}.sock"
        self._socket: socket.socket | None = None
        self._peers: list[str] = []
        self._peers_read_at = float("-inf")
        self._on_event: Callable[[RatingEvent], None] | None = None
        #: Notices sent, received, and those that could not be sent (each one a store read
        #: for a sibling, not a loss), for /metrics.
        self.counts = {"sent": 0, "received": 0, "dropped": 0}

    @classmethod
    def from_env(cls) -> SiblingNotices | None:
        """The channel the supervisor set up, or None for a lone process."""
        directory = os.environ.get(NOTIFY_DIR_ENV)
        if not directory:
            return None
        return cls(directory, os.environ.get(WORKER_INDEX_ENV) or str(os.getpid()))

    def start(self, on_event: Callable[[RatingEvent], None]) -> None:
        """Bind this worker's socket and hand every notice received to ``on_event``. If it
        cannot be bound, the worker runs without notices (its relay's poll of the store still
        brings every event, later) and says so once."""
        self._on_event = on_event
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()  # left by this worker's previous life
            sock.bind(str(self._path))
        except OSError as exc:
            sock.close()
            log.warning(
                "worker notices off (%s: %s): commits in the other workers reach this "
                "worker's subscribers at its relay's next poll of the store",
                self._path,
                exc,
            )
            return
        self._socket = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._receive)

    def announce(self, event: RatingEvent) -> None:
        """Tell every sibling about ``event`` (an after-commit step: ratewire.runtime.delivery)."""
        sock = self._socket
        if sock is None:
            return
        notice = encode_event(event)
        for peer in self._current_peers():
            try:
                sock.sendto(notice, peer)
            except OSError:
                # Full queue (BlockingIOError) or a sibling between lives: it reads the store.
                self.counts["dropped"] += 1
            else:
                self.counts["sent"] += 1

    def _current_peers(self) -> list[str]:
        now = asyncio.get_running_loop().time()
        # Read again while alone too: at start the siblings bind their sockets after us.
        if not self._peers or now - self._peers_read_at >= PEERS_REFRESH_SECONDS:
            self._peers_read_at = now
            own = self._path.name
            self._peers = [
                str(path)
                for path in self._directory.glob("w*.sock")
                if path.name != own and path.is_socket()
            ]
        return self._peers

    def _receive(self) -> None:
        sock, on_event = self._socket, self._on_event
        if sock is None or on_event is None:
            return
        while True:
            try:
                notice = sock.recv(MAX_NOTICE_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("worker notices: receive failed (%s)", exc)
                return
            try:
                event = decode_event(notice)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("worker notices: ignoring a malformed notice (%s)", exc)
                continue
            self.counts["received"] += 1
            on_event(event)

    def close(self) -> None:
        sock, self._socket = self._socket, None
        if sock is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()


def notices_directory() -> str:
    """A new directory for one supervisor's workers' sockets: under the system's temporary
    directory, or under /tmp when that path is too long for the sockets in it."""
    base = tempfile.gettempdir()
    if len(base) > MAX_SOCKET_PATH - 40 and os.path.isdir("/tmp"):
        base = "/tmp"
    return tempfile.mkdtemp(prefix="ratewire-notices-", dir=base)
