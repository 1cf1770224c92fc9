"""``bench.tcp_proxy.TcpProxy`` on a thread of its own, for tests that cut and restore a real
server's reachability (the database of a cluster test, say) from outside any event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

from bench.tcp_proxy import TcpProxy as AsyncTcpProxy


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``target``; ``cut()`` drops every connection and refuses
    new ones until ``restore()``; ``drop_on_accept`` accepts and drops at once."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._proxy = AsyncTcpProxy(target_port, target_host)
        self.port = self._proxy.port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.restore()

    @property
    def drop_on_accept(self) -> bool:
        return self._proxy.drop_on_accept

    @drop_on_accept.setter
    def drop_on_accept(self, value: bool) -> None:
        self._proxy.drop_on_accept = value

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _cut(self) -> None:
        self._proxy.cut()

    def restore(self) -> None:
        self._call(self._proxy.restore())

    def cut(self) -> None:
        self._call(self._cut())

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
