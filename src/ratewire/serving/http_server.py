"""The main port: the ASGI app (REST, ``/ws``, the dashboard, ``/metrics``) served by uvicorn,
on listening sockets the runtime owns and a :class:`~ratewire.serving.listener.PausableListener`
accepts on, so that accepting pauses with the WebSocket port's when descriptors are short.
uvicorn itself runs with no socket of its own; its protocols are built as it builds them."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from functools import partial
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from ratewire.config import Settings
from ratewire.serving.http_protocol import http_protocol_with_head_timeout
from ratewire.serving.listener import DescriptorBudget, PausableListener, listening_sockets

#: uvicorn's own message size cap, as a multiple of limits.max_message_bytes (see below).
WS_BACKSTOP_FACTOR = 4


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: the runtime owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_config(
    app: ASGIApp, settings: Settings, budget: DescriptorBudget, ws_protocol: type[Any]
) -> uvicorn.Config:
    """uvicorn's settings for ratewire's main port."""
    limits = settings.limits
    return uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        http=http_protocol_with_head_timeout(limits.handshake_timeout_seconds, budget),
        # Client addresses from proxy headers: only server.trusted_proxies, handled by
        # ClientAddressMiddleware (uvicorn would trust 127.0.0.1 by default).
        proxy_headers=False,
        ws=ws_protocol,
        ws_per_message_deflate=False,
        # /ws closes messages over max_message_bytes with 1009 itself (a clean close);
        # this is the backstop that bounds what uvicorn buffers for one message.
        ws_max_size=limits.max_message_bytes * WS_BACKSTOP_FACTOR,
        ws_ping_interval=limits.ping_interval_seconds,
        ws_ping_timeout=limits.ping_interval_seconds,
        lifespan="off",
        log_config=None,
        access_log=False,
        ssl_certfile=settings.tls.cert,
        ssl_keyfile=settings.tls.key,
        server_header=False,
        backlog=4096,
    )


class HttpServer:
    """The main port, from binding (in the constructor: a port in use fails there) to the
    end of in-flight requests."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        budget: DescriptorBudget,
        ws_protocol: type[Any],
        *,
        reuse_port: bool = False,
    ) -> None:
        self._sockets = listening_sockets(
            settings.server.host, settings.server.port, reuse_port=reuse_port
        )
        self._budget = budget
        self._server = _UvicornServer(uvicorn_config(app, settings, budget, ws_protocol))
        self._listener: PausableListener | None = None
        #: uvicorn's main loop; done when it stops (or failed to start).
        self.serving: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Run uvicorn and accept for it once it has started."""
        server = self._server
        self.serving = asyncio.create_task(server.serve([]), name="http-server")
        while not server.started:
            if self.serving.done():
                self.serving.result()  # a failed start surfaces here
                raise RuntimeError("the HTTP server stopped at start")
            await asyncio.sleep(0.01)
        config = server.config
        protocol_class: Any = config.http_protocol_class  # uvicorn types it as a Protocol
        factory = partial(
            protocol_class,
            config=config,
            server_state=server.server_state,
            app_state=server.lifespan.state,
        )
        self._listener = PausableListener(self._sockets, factory, config.ssl, self._budget)
        await self._listener.start()

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The main port's TLS context once started (None without TLS): loading a new
        certificate chain into it serves the new one to new handshakes."""
        context: ssl.SSLContext | None = self._server.config.ssl if self._listener else None
        return context

    async def shutdown(self) -> None:
        """Stop accepting, then let uvicorn finish the requests in flight."""
        self.close()
        self._server.should_exit = True
        if self.serving is not None:
            await self.serving

    def close(self) -> None:
        """Stop accepting and close the listening sockets (idempotent)."""
        if self._listener is not None:
            self._listener.close()
        else:
            for sock in self._sockets:
                sock.close()
