"""The WebSocket module's own port, served by picows (Cython framing on asyncio/uvloop).

picows won the measurement in bench/ws_impls (see the README's table). Two things it does not
give us are added here:
- the peer address at upgrade time, which the per-IP connection limit needs: an accept gate
  protocol looks at the address, answers HTTP 429 itself when the IP is over its rate, and
  otherwise hands the transport to picows (``transport.set_protocol``; no cost afterwards);
- a per-connection send-buffer limit: the transport's high-water mark is set to
  ``limits.send_buffer_bytes`` and crossing it (``pause_writing``) closes with 4009.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from functools import partial
from typing import Any

from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)
from picows.picows import WSProtocol  # type: ignore[attr-defined]

from ratewire.realtime.handshake import (
    AT_CAPACITY_BODY,
    IP_CAP_BODY,
    ORIGIN_REFUSED_BODY,
    RATE_REFUSED_BODY,
    USER_CAP_BODY,
    USER_CAP_REACHED,
    chosen_subprotocol,
    offered_subprotocols,
    origin_allowed,
    upgrade_credentials,
)
from ratewire.realtime.session import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_SLOW,
    RealtimeContext,
    Session,
)
from ratewire.realtime.slots import RETRY_AFTER_SECONDS, ConnectionSlots
from ratewire.security.proxies import TrustedProxies
from ratewire.security.ratelimit import ConnectionRateLimiter
from ratewire.security.tokens import InvalidToken, Principal
from ratewire.serving.listener import DescriptorBudget, PausableListener, listening_sockets

log = logging.getLogger("ratewire.ws")
# An adapter, not a Logger: picows builds a child Logger per connection for a Logger (memory
# per idle connection). WARNING: picows logs every accepted connection at INFO.
_PICOWS_LOGGER = logging.LoggerAdapter(logging.getLogger("picows.server"), {})
logging.getLogger("picows").setLevel(logging.WARNING)
KERNEL_SEND_BUFFER_MAX = 256 * 1024
CLOSE_HANDSHAKE_SECONDS = 5.0  # how long a closed peer may take to answer our close frame


class PicowsPeer(WSListener):
    """One picows connection, adapting it to a :class:`Session`."""

    __slots__ = (
        "_client_ip",
        "_ctx",
        "_fragmented_text",
        "_fragments",
        "_peer_close_code",
        "_releases_ip",
        "_token",
        "session",
        "transport",
    )

    def __init__(
        self,
        ctx: RealtimeContext,
        token: str | Principal | InvalidToken | None,
        client_ip: str,
        releases_ip: bool = False,
    ) -> None:
        super().__init__()
        self._ctx = ctx
        self._token = token
        self._client_ip = client_ip
        self._peer_close_code: int | None = None
        # Set when a trusted proxy reported the client: its per-IP slot is released here.
        self._releases_ip = releases_ip
        self._fragments: bytearray | None = None
        self._fragmented_text = False
        self.transport: WSTransport | None = None
        self.session: Session | None = None

    # picows callbacks ----------------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        transport.underlying_transport.set_write_buffer_limits(
            high=self._ctx.limits.send_buffer_bytes
        )
        self.session = session = Session(self, self._ctx, self._client_ip, "module")
        # What the hub calls per delivery: picows' own send, with no Python frame of ours in
        # between (send_text's checks are for before the connection exists; picows ignores a
        # send after close).
        session.send = partial(transport.send, WSMsgType.TEXT)
        # Several frames in one write (one syscall): the bytes are complete server frames.
        session.send_frames = partial(_write_framed, transport.underlying_transport.write)
        session.opened(self._token)
        self._token = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        session = self.session
        if session is None:
            return
        msg_type = frame.msg_type
        # RFC 6455 5.2 and 5.4, as strictly as /ws: no extension was negotiated, so a set RSV
        # bit fails the connection; so does a continuation with no message begun, or a new
        # message inside a fragmented one (picows leaves all three to the application).
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self._fail("RSV bits set without a negotiated extension")
            return
        if msg_type == WSMsgType.TEXT or msg_type == WSMsgType.BINARY:
            if self._fragments is not None:
                self._fail("a new message inside a fragmented one")
            elif transport.is_close_frame_sent:
                return  # closing: the client's close frame is what counts now
            elif frame.fin:
                self._deliver(session, frame.get_payload_as_bytes(), msg_type == WSMsgType.TEXT)
            else:
                self._fragments = bytearray(frame.get_payload_as_memoryview())
                self._fragmented_text = msg_type == WSMsgType.TEXT
        elif msg_type == WSMsgType.CONTINUATION:
            if self._fragments is None:
                if not transport.is_close_frame_sent:
                    self._fail("a continuation frame with no message to continue")
                return
            self._fragments += frame.get_payload_as_memoryview()
            if len(self._fragments) > self._ctx.limits.max_message_bytes:
                self._fragments = None
                self.close(CLOSE_MESSAGE_TOO_BIG, "Message too big")
            elif frame.fin:
                payload, self._fragments = bytes(self._fragments), None
                self._deliver(session, payload, self._fragmented_text)
        elif msg_type == WSMsgType.CLOSE:
            self._peer_close_code = frame.get_close_code().value
            if not transport.is_close_frame_sent:
                transport.send_close(frame.get_close_code())
            transport.disconnect()

    def _fail(self, why: str) -> None:
        self._fragments = None
        self.close(CLOSE_PROTOCOL_ERROR, f"Protocol error: {why}")

    def _deliver(self, session: Session, payload: bytes, text: bool) -> None:
        # RFC 6455 section 8.1: a text message that is not UTF-8 fails the connection (1007),
        # as /ws does (uvicorn checks there). Client messages are small and rate-limited.
        if text and not payload.isascii():
            try:
                payload.decode()
            except UnicodeDecodeError:
                self.close(CLOSE_INVALID_PAYLOAD, "Invalid UTF-8")
                return
        session.received(payload)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.session is not None:
            self.session.closed_by_peer(self._peer_close_code)
        if self._releases_ip:
            self._releases_ip = False
            self._ctx.slots.release_ip(self._client_ip)

    def pause_writing(self) -> None:
        # The kernel and transport buffers hold send_buffer_bytes already: this client cannot
        # keep up. Cut it; it resumes with `since` and loses nothing.
        if self.session is not None:
            self.session.close(CLOSE_TOO_SLOW, "Client too slow")

    def resume_writing(self) -> None:
        return None

    # Peer ------------------------------------------------------------------------------------

    def send_text(self, data: bytes) -> None:
        # Measured (1,000 subscribers, this machine): 7.5 us per send, the same as writing a
        # pre-framed buffer to the raw transport: the loopback write() syscall is the cost, so
        # picows' own framing stays.
        transport = self.transport
        if transport is not None:
            transport.send(WSMsgType.TEXT, data)

    def close(self, code: int, reason: str) -> None:
        # The close handshake: the client answers with its own close frame (see on_ws_frame),
        # then the socket closes. Closing at once would reset the connection whenever client
        # frames are still unread, and the client would never see the code.
        transport = self.transport
        if transport is None or transport.is_close_frame_sent:
            return
        transport.send_close(WSCloseCode(code), reason.encode())
        asyncio.get_running_loop().call_later(CLOSE_HANDSHAKE_SECONDS, transport.disconnect, False)

    async def drain(self) -> None:
        transport = self.transport
        if transport is None:
            return
        low = self._ctx.limits.send_buffer_bytes // 4
        underlying = transport.underlying_transport
        # Polled: the transport only signals crossing the high-water mark, which here means
        # "too slow" (4009); replay pages need the lower threshold.
        while underlying.get_write_buffer_size() > low and not transport.is_disconnected:  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def _write_framed(write: Callable[[bytes], object], payloads: object, framed: bytes) -> None:
    write(framed)


class _SlotReleasingProtocol(WSProtocol):  # type: ignore[misc]
    """picows' protocol, giving back the connection's capacity slot when the socket closes
    (only connection_lost is overridden: the frame path is untouched)."""

    def __init__(self, release: Callable[[], None], *args: Any) -> None:
        super().__init__(*args)
        self._release_slot = release

    def connection_lost(self, exc: Exception | None) -> None:
        self._release_slot()
        super().connection_lost(exc)


class _AcceptGate(asyncio.Protocol):
    """Decides, at TCP accept, whether the peer's IP may open another connection now."""

    def __init__(
        self,
        make_ws_protocol: Callable[[str, bool, Any], Any],
        limiter: ConnectionRateLimiter,
        kernel_send_buffer: int,
        slots: ConnectionSlots,
        handshake_timeout: float,
        proxies: TrustedProxies,
        budget: DescriptorBudget,
    ) -> None:
        self._make_ws_protocol = make_ws_protocol
        self._budget = budget
        self._proxies = proxies
        self._limiter = limiter
        self._kernel_send_buffer = kernel_send_buffer
        self._slots = slots
        self._ip = ""
        self._slot_ip: str | None = None
        self._holds_slot = False
        self._handshake_timeout = handshake_timeout
        self._deadline: asyncio.TimerHandle | None = None
        self._transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self._head = bytearray()
        self._refusal = b""

    def connection_made(self, transport: Any) -> None:
        # Counted first: at the budget, accepting pauses before the next accept.
        self._budget.take(transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._ip = ip = peer[0] if peer else "unknown"
        # A trusted proxy speaks for many clients: their addresses (and per-IP limits) are
        # known only once the request head names them (listener_for).
        via_proxy = self._proxies.trusts(ip)
        self._slot_ip = None if via_proxy else ip  # what the slot was taken for
        admitted = self._slots.admit(self._slot_ip)
        if admitted != ConnectionSlots.ADMITTED:
            self._refuse_later()
            self._refusal = (
                _refusal(b"503 Service Unavailable", RETRY_AFTER_SECONDS, AT_CAPACITY_BODY)
                if admitted == ConnectionSlots.OVER_CAPACITY
                else _refusal(b"429 Too Many Requests", RETRY_AFTER_SECONDS, IP_CAP_BODY)
            )
            return
        self._holds_slot = True
        retry_after = 0 if via_proxy else self._limiter.acquire(ip)
        if retry_after == 0:
            # Without a fixed size, Linux grows a socket's send buffer up to 4 MiB for a peer
            # that stopped reading: send_buffer_bytes would not bound what it holds.
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._kernel_send_buffer)
            ws_protocol = self._make_ws_protocol(ip, via_proxy, transport)
            self._holds_slot = False  # the WebSocket protocol releases it when it closes
            transport.set_protocol(ws_protocol)
            ws_protocol.connection_made(transport)
            return
        self._refuse_later()
        self._refusal = _refusal(b"429 Too Many Requests", retry_after, RATE_REFUSED_BODY)

    def data_received(self, data: bytes) -> None:
        self._head += data
        if b"\r\n\r\n" in self._head or len(self._head) > 16384:
            self._reject()

    def eof_received(self) -> bool | None:
        self._reject()
        return None

    def _refuse_later(self) -> None:
        # Answer once the request head is in (closing earlier would reset the connection
        # under a client still sending), or at the handshake timeout if it never comes.
        self._deadline = asyncio.get_running_loop().call_later(
            self._handshake_timeout, self._reject
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._budget.give(self._transport)
        if self._holds_slot:
            self._holds_slot = False
            self._slots.release(self._slot_ip)

    def _reject(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(self._refusal)
        transport.close()


def _refusal(status: bytes, retry_after: int, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 %s\r\nRetry-After: %d\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (status, retry_after, len(body), body)
    )


async def start_module_server(
    ctx: RealtimeContext,
    limiter: ConnectionRateLimiter,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    *,
    reuse_port: bool = False,
    budget: DescriptorBudget,
) -> PausableListener:
    """Listen for WebSocket connections at ``ws[s]://host:port/`` (``reuse_port``: shared
    with the other workers on this host). Accepting pauses while ``budget`` is spent (see
    :mod:`ratewire.serving.listener`)."""
    limits = ctx.limits

    def refuse(status: int, body: bytes, retry_after: int | None = None) -> Any:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return WSUpgradeResponseWithListener(
            WSUpgradeResponse.create_error_response(status, body, headers), None
        )

    def listener_for(peer_ip: str, via_proxy: bool, request: WSUpgradeRequest) -> PicowsPeer | Any:
        raw_path = (
            request.path.decode("latin-1") if isinstance(request.path, bytes) else request.path
        )
        if raw_path.partition("?")[0] not in ("", "/"):
            return None  # picows answers 404
        headers = request.headers
        if not origin_allowed(headers.get("origin"), ctx.allowed_origins):
            return refuse(403, ORIGIN_REFUSED_BODY)
        client_ip = peer_ip
        if via_proxy:
            client_ip = ctx.proxies.client_ip(peer_ip, headers.get)
            if not ctx.slots.admit_ip(client_ip):
                return refuse(429, IP_CAP_BODY, RETRY_AFTER_SECONDS)
            retry_after = limiter.acquire(client_ip)
            if retry_after:
                ctx.slots.release_ip(client_ip)
                return refuse(429, RATE_REFUSED_BODY, retry_after)
        offered = offered_subprotocols(headers.getall("sec-websocket-protocol", ()))
        credentials = upgrade_credentials(ctx, raw_path, headers.get("authorization"), offered)
        if credentials is USER_CAP_REACHED:
            if via_proxy:
                ctx.slots.release_ip(client_ip)
            return refuse(429, USER_CAP_BODY, RETRY_AFTER_SECONDS)
        peer = PicowsPeer(ctx, credentials, client_ip, releases_ip=via_proxy)
        subprotocol = chosen_subprotocol(offered)
        if subprotocol is None:
            return peer  # picows' own 101, as before subprotocols were known
        selected = WSUpgradeResponse.create_101_response({"Sec-WebSocket-Protocol": subprotocol})
        return WSUpgradeResponseWithListener(selected, peer)

    def make_ws_protocol(ip: str, via_proxy: bool, transport: Any) -> Any:
        # The arguments ws_create_server passes (picows 2.x); built here so the accept gate
        # can sit in front of it.
        slot_ip = None if via_proxy else ip

        def release() -> None:
            ctx.slots.release(slot_ip)
            budget.give(transport)

        return _SlotReleasingProtocol(
            release,
            None,
            None,
            False,
            partial(listener_for, ip, via_proxy),
            _PICOWS_LOGGER,
            True,
            limits.handshake_timeout_seconds,  # the upgrade request must be in by then
            True,
            limits.ping_interval_seconds,
            limits.ping_interval_seconds,
            WSAutoPingStrategy.PING_WHEN_IDLE,
            True,
            limits.max_message_bytes,
            None,
            2048,  # initial read buffer: client frames are small; grows when needed
        )

    listener = PausableListener(
        listening_sockets(host, port, reuse_port=reuse_port),
        lambda: _AcceptGate(
            make_ws_protocol,
            limiter,
            min(limits.send_buffer_bytes, KERNEL_SEND_BUFFER_MAX),
            ctx.slots,
            limits.handshake_timeout_seconds,
            ctx.proxies,
            budget,
        ),
        ssl_context,
        budget,
    )
    await listener.start()
    return listener
