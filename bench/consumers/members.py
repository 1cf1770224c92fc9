"""A member of the durable consumer: one process (so the run can SIGKILL it), one picows
WebSocket, acking what it receives in batches, and a ledger file of everything it saw.

The ledger is how the parent counts every offset even for a member it killed: each line is
written (an unbuffered ``write``: in the kernel, so SIGKILL cannot lose it) before the member
acts on it, and an ack is logged before its frame is sent. Lines, space-separated:

    S <offset>                           subscribed; the consumer's ackFloor then
    D <offset> <delivery> <recv_ns> <sent_ns> <created_ns>
                                         a rating_update (sent_ns 0: a warm-up write;
                                         created_ns: its createdAt, to the millisecond)
    A <ns> <offset,offset,...>           an ack frame about to be sent
    C <ns> <offset,offset,...>           the server's ``acked`` answer (the ack is stored)
    E <frame>                            an error frame from the server
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path

#: The most offsets one ``ack`` frame may carry (docs/protocol.md).
MOST_PER_ACK = 1000


class Ledger:
    """Append-only lines in a file, each one ``write`` call, unbuffered."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, line: str) -> None:
        os.write(self._fd, line.encode() + b"\n")

    def close(self) -> None:
        os.close(self._fd)


def member_worker(
    conn: Connection,
    ws_url: str,
    member_token: str,
    topic: str,
    consumer: str,
    settings: dict[str, int],
    ack_every_ms: int,
    ledger_path: Path,
) -> None:
    """Join ``consumer`` on ``topic`` (``settings``: ``ackWaitMs``, ``maxInFlight``), say
    ``ready`` on ``conn``, then ack what arrives every ``ack_every_ms`` until told ``stop``:
    then ack the rest, wait for the server's answers, and leave."""
    import uvloop
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    ledger = Ledger(ledger_path)
    subscribe = json.dumps(
        {"action": "subscribe", "topic": topic, "consumer": consumer, **settings}
    ).encode()
    unacked: list[int] = []
    #: Offsets whose ack frame went out and whose ``acked`` answer has not come back.
    unconfirmed: set[int] = set()
    #: Set while ``unconfirmed`` is empty (made inside the loop, in ``run``).
    all_confirmed: list[asyncio.Event] = []

    class Member(WSListener):
        def __init__(self) -> None:
            self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            payload = frame.get_payload_as_bytes()
            now = time.time_ns()
            message = json.loads(payload)
            kind = message.get("type")
            if kind == "rating_update":
                data = message["data"]
                comment = data.get("comment") or ""
                sent = int(comment[2:]) if comment.startswith("t=") else 0
                created = int(datetime.fromisoformat(data["createdAt"]).timestamp() * 1e9)
                ledger.write(f"D {message['offset']} {message['delivery']} {now} {sent} {created}")
                unacked.append(message["offset"])
            elif kind == "acked":
                offsets = message["offsets"]
                ledger.write(f"C {now} {','.join(map(str, offsets))}")
                unconfirmed.difference_update(offsets)
                if not unconfirmed:
                    all_confirmed[0].set()
            elif kind == "connection_success":
                transport.send(WSMsgType.TEXT, subscribe)
            elif kind == "subscribed":
                ledger.write(f"S {message['offset']}")
                self.ready.set_result(None)
            elif kind == "error":
                ledger.write(f"E {payload.decode()}")
                if not self.ready.done():
                    self.ready.set_exception(RuntimeError(payload.decode()))

    def send_acks(transport: WSTransport) -> None:
        while unacked:
            batch = unacked[:MOST_PER_ACK]
            del unacked[:MOST_PER_ACK]
            ledger.write(f"A {time.time_ns()} {','.join(map(str, batch))}")
            unconfirmed.update(batch)
            all_confirmed[0].clear()
            frame = {"action": "ack", "topic": topic, "consumer": consumer, "offsets": batch}
            transport.send(WSMsgType.TEXT, json.dumps(frame).encode())

    async def ack_in_batches(transport: WSTransport) -> None:
        # One frame per interval, not per event: limits.ws_messages_per_client_per_second
        # (20 by default) stays as it is, as a real member would find it.
        while True:
            await asyncio.sleep(ack_every_ms / 1000)
            send_acks(transport)

    async def run() -> None:
        all_confirmed.append(asyncio.Event())
        all_confirmed[0].set()
        transport, listener = await ws_connect(Member, f"{ws_url}?token={member_token}")
        assert isinstance(listener, Member)
        await asyncio.wait_for(listener.ready, 30)
        conn.send("ready")
        acking = asyncio.create_task(ack_in_batches(transport))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # "stop"
        acking.cancel()
        send_acks(transport)
        with contextlib.suppress(TimeoutError):  # the ledger then shows what stayed open
            await asyncio.wait_for(all_confirmed[0].wait(), 10)
        transport.disconnect()
        ledger.close()
        conn.send("stopped")

    uvloop.run(run())
