"""Run a command as a person at a terminal would see it: its stderr (and stdout, if asked) on
a pseudo-terminal, so ``isatty()`` is true, read until an expected text appears."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Terminal:
    """``command`` with stderr on a pseudo-terminal; stdout too if ``stdout_on_terminal``,
    else a pipe (``process.stdout``) as a script would read it."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        stdout_on_terminal: bool = False,
    ) -> None:
        self._master, replica = pty.openpty()
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=replica if stdout_on_terminal else subprocess.PIPE,
            stderr=replica,
            start_new_session=True,
        )
        os.close(replica)
        self.seen = ""

    def read_until(self, text: str, deadline_seconds: float = 60) -> str:
        """What the terminal showed up to and including ``text`` (colours removed); fails
        with everything shown if the process ends or the deadline passes first."""
        deadline = time.monotonic() + deadline_seconds
        while text not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} never shown; the terminal showed:\n{self.seen}")
            ready, _, _ = select.select([self._master], [], [], min(left, 1))
            if not ready:
                continue
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"{text!r} never shown; the terminal showed:\n{self.seen}")
            self.seen += _ANSI.sub("", chunk.decode(errors="replace").replace("\r\n", "\n"))
        return self.seen

    def stop(self) -> int:
        """SIGTERM to the command's process group; its exit status."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(30)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
            os.close(self._master)
