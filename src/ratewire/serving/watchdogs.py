"""When the process runs out of descriptors anyway (a lower limit imposed later, another
cause), it says so: uvloop (libuv) handles EMFILE at accept silently, by accepting and closing
the connections it cannot keep, so a watchdog counts the open descriptors once a second and
logs while they are exhausted (at most one line a second, with the count of such seconds), and
accept errors that do reach the event loop (the stdlib loop's) are counted and logged at most
once a second. The servers keep serving what they hold and accept again by themselves once
descriptors free up: nothing to restart, no busy loop."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from typing import Any

log = logging.getLogger("ratewire.capacity")
_ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class AcceptErrorReporter:
    """An event-loop exception handler that turns a flood of accept failures (out of
    descriptors) into one counted log line per second; anything else goes to the default
    handler."""

    def __init__(self, interval: float = 1.0) -> None:
        self.count = 0
        self._unreported = 0
        self._interval = interval
        self._last = -interval

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.set_exception_handler(self)

    @staticmethod
    def is_accept_error(context: dict[str, Any]) -> bool:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _ACCEPT_ERRNOS:
            return True
        message = str(context.get("message", ""))
        return "accept" in message.lower() and "Too many open files" in str(exc or message)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not self.is_accept_error(context):
            loop.default_exception_handler(context)
            return
        self.count += 1
        self._unreported += 1
        now = time.monotonic()
        if now - self._last >= self._interval:
            log.error(
                "cannot accept connections: out of file descriptors (%s); %d refused since the "
                "last report, %d in all; serving the open ones, accepting again when "
                "descriptors free up",
                context.get("exception") or context.get("message"),
                self._unreported,
                self.count,
            )
            self._last, self._unreported = now, 0


class DescriptorWatchdog:
    """Once a second: are the process's descriptors exhausted? Logs while they are."""

    def __init__(self, limit: int, *, interval: float = 1.0, margin: int = 4) -> None:
        self.limit = limit
        self.exhausted_seconds = 0
        self._interval = interval
        self._margin = margin
        self._exhausted = False

    def open_descriptors(self) -> int:
        try:
            return len(os.listdir("/proc/self/fd"))
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                return self.limit  # listing needs a descriptor itself: none left
            return 0  # not Linux: nothing to watch

    def check(self) -> None:
        in_use = self.open_descriptors()
        if in_use >= self.limit - self._margin:
            self.exhausted_seconds += 1
            self._exhausted = True
            log.error(
                "out of file descriptors: %d of %d in use; new connections are closed at accept "
                "until some close (%d s so far); see limits.max_connections and ulimit -n",
                in_use,
                self.limit,
                self.exhausted_seconds,
            )
        elif self._exhausted:
            self._exhausted = False
            log.warning("file descriptors available again: %d of %d in use", in_use, self.limit)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.check()
