"""The bare broadcast server the fan-out is measured against as its floor, on three WebSocket
implementations: JWT on ``?token=``, ``connection_success``, ``subscribe``, and a
``POST /ratings`` trigger that encodes each event once and writes it to every subscriber
without awaiting; no storage, history or auth beyond the token.

- picows (Cython framing over asyncio/uvloop): ``bench.fanout --target floor``,
- the ``websockets`` library's asyncio server,
- uvicorn's own WebSocket (websockets-sansio) under a plain ASGI app.

:func:`start` runs one in a process of its own (``python -m bench.ws_broadcast --serve IMPL``);
bench.ws_impls measures the three side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jwt
import orjson

from bench.servers import SECRET, Target, free_port, wait_http

IMPLEMENTATIONS = ("picows", "websockets", "uvicorn")


class Broadcast:
    """Subscribers of each topic as send callables, and the encode-once fan-out."""

    def __init__(self) -> None:
        self.topics: dict[str, set[Callable[[bytes], Any]]] = {}
        self.offsets: dict[str, int] = {}

    def hello(self, token: str | None) -> bytes | None:
        try:
            claims = jwt.decode(token or "", SECRET, algorithms=["HS256"])
        except jwt.PyJWTError:
            return None
        return orjson.dumps(
            {"type": "connection_success", "clientId": "x", "userId": claims["sub"], "protocol": 1}
        )

    def subscribe(self, payload: bytes, send: Callable[[bytes], Any]) -> bytes:
        topic = orjson.loads(payload)["topic"]
        self.topics.setdefault(topic, set()).add(send)
        return orjson.dumps({"type": "subscribed", "topic": topic, "offset": 0, "epoch": "b"})

    def forget(self, send: Callable[[bytes], Any]) -> None:
        for subscribers in self.topics.values():
            subscribers.discard(send)

    def publish(self, body: bytes) -> bytes:
        rating = orjson.loads(body)
        rating["gameId"], rating["userId"] = str(rating["gameId"]), str(rating["userId"])
        data = orjson.dumps(rating)
        for topic in ("rating.global", f"rating.game.{rating['gameId']}"):
            offset = self.offsets[topic] = self.offsets.get(topic, 0) + 1
            subscribers = self.topics.get(topic)
            if subscribers:
                frame = (
                    b'{"type":"rating_update","topic":"%s","offset":%d,"event":"created","data":%s}'
                    % (topic.encode(), offset, data)
                )
                for send in tuple(subscribers):
                    send(frame)
        return data


def token_of(path: str) -> str | None:
    from urllib.parse import parse_qs, urlsplit

    return (parse_qs(urlsplit(path).query).get("token") or [None])[0]


def http_app(broadcast: Broadcast) -> Any:
    """The POST /ratings trigger and /healthz, as a bare ASGI app served by uvicorn."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        answer, status = (
            (broadcast.publish(body), 201) if scope["method"] == "POST" else (b"{}", 200)
        )
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    return app


async def serve(impl: str, ws_port: int, http_port: int) -> None:
    import uvicorn

    broadcast = Broadcast()
    in_flight: set[asyncio.Future[None]] = set()
    if impl == "picows":
        from picows import WSListener, WSMsgType, WSTransport, ws_create_server

        class Peer(WSListener):  # type: ignore[misc]
            def __init__(self, token: str | None) -> None:
                self.token = token
                self.transport: WSTransport | None = None

            def send(self, frame: bytes) -> None:
                assert self.transport is not None
                self.transport.send(WSMsgType.TEXT, frame)

            def on_ws_connected(self, transport: WSTransport) -> None:
                self.transport = transport
                hello = broadcast.hello(self.token)
                if hello is None:
                    transport.send_close(4001, b"Invalid token")
                    transport.disconnect()
                else:
                    transport.send(WSMsgType.TEXT, hello)

            def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
                if frame.msg_type == WSMsgType.TEXT:
                    transport.send(
                        WSMsgType.TEXT, broadcast.subscribe(frame.get_payload_as_bytes(), self.send)
                    )

            def on_ws_disconnected(self, transport: WSTransport) -> None:
                broadcast.forget(self.send)

        await ws_create_server(
            lambda request: Peer(token_of(request.path.decode())),
            "127.0.0.1",
            ws_port,
            read_buffer_init_size=2048,
        )
    elif impl == "websockets":
        from websockets.asyncio.server import ServerConnection
        from websockets.asyncio.server import serve as ws_serve

        async def handler(connection: ServerConnection) -> None:
            assert connection.request is not None
            hello = broadcast.hello(token_of(connection.request.path))
            if hello is None:
                await connection.close(4001, "Invalid token")
                return

            def send(frame: bytes) -> None:
                # Fire and forget, as the fan-out must not await a client.
                task = asyncio.ensure_future(connection.send(frame.decode()))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)

            await connection.send(hello.decode())
            try:
                async for message in connection:
                    await connection.send(
                        broadcast.subscribe(
                            message.encode() if isinstance(message, str) else message, send
                        ).decode()
                    )
            finally:
                broadcast.forget(send)

        await ws_serve(handler, "127.0.0.1", ws_port, compression=None)
    else:

        async def ws_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "websocket":
                return await http_app(broadcast)(scope, receive, send)
            await receive()  # websocket.connect
            hello = broadcast.hello(token_of("?" + scope["query_string"].decode()))
            await send({"type": "websocket.accept"})
            if hello is None:
                await send({"type": "websocket.close", "code": 4001, "reason": "Invalid token"})
                return
            queue: asyncio.Queue[bytes] = asyncio.Queue()
            await send({"type": "websocket.send", "text": hello.decode()})

            async def writer() -> None:
                while True:
                    await send({"type": "websocket.send", "text": (await queue.get()).decode()})

            task = asyncio.create_task(writer())
            try:
                while True:
                    message = await receive()
                    if message["type"] == "websocket.disconnect":
                        break
                    payload = message.get("bytes") or message.get("text", "").encode()
                    queue.put_nowait(broadcast.subscribe(payload, queue.put_nowait))
            finally:
                broadcast.forget(queue.put_nowait)
                task.cancel()

        ws_config = uvicorn.Config(
            ws_app,
            host="127.0.0.1",
            port=ws_port,
            ws="websockets-sansio",
            ws_per_message_deflate=False,
            lifespan="off",
            log_level="warning",
            backlog=4096,
        )
        ws_server = asyncio.create_task(uvicorn.Server(ws_config).serve())
        in_flight.add(ws_server)
    http_config = uvicorn.Config(
        http_app(broadcast),
        host="127.0.0.1",
        port=http_port,
        http="httptools",
        lifespan="off",
        log_level="warning",
    )
    print("READY", flush=True)
    await uvicorn.Server(http_config).serve()


def start(impl: str) -> Target:
    ws_port, http_port = free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"ws-{impl}-"))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.ws_broadcast",
            "--serve",
            impl,
            "--ws-port",
            str(ws_port),
            "--http-port",
            str(http_port),
        ],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{http_port}/healthz", process, impl)
    time.sleep(0.3)
    return Target(
        impl,
        f"ws://127.0.0.1:{ws_port}/",
        f"http://127.0.0.1:{http_port}/ratings",
        process,
        workdir,
    )


def serve_forever(impl: str, ws_port: int, http_port: int) -> None:
    import uvloop

    uvloop.run(serve(impl, ws_port, http_port))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=IMPLEMENTATIONS, required=True)
    parser.add_argument("--ws-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    args = parser.parse_args(argv)
    serve_forever(args.serve, args.ws_port, args.http_port)


if __name__ == "__main__":
    main()
