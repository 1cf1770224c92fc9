"""Webhook benchmark: one webhook on a game topic, a local receiver on this machine, writes
over REST; reports events delivered per second and commit-to-receipt latency (from the
rating's ``createdAt``, stamped in the write's transaction, to the receiver reading the POST).

    python -m bench.webhooks --seconds 10 --rate 0      # flat out
    python -m bench.webhooks --seconds 10 --rate 100 --json-out bench/results/webhooks.json

The receiver verifies nothing (the signature check is the receiver's cost, not ratewire's);
it answers 204 at once, as a queue-backed endpoint would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx

from bench.fanout.publisher import publish
from bench.servers import start_ratewire, token


class Receiver:
    """Answers 204 to every POST and notes when each event arrived."""

    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.ids: set[str] = set()
        self.last_at = 0.0
        self.port = 0

    async def start(self) -> None:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
                now = time.time()
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                event = json.loads(body)
                message_id = head.lower().split(b"webhook-id:")[1].split(b"\r\n")[0].strip()
                if message_id.decode() not in self.ids:
                    self.ids.add(message_id.decode())
                    created = event["data"]["createdAt"]
                    committed = time.mktime(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S"))
                    committed += int(created[20:23]) / 1000 - time.timezone
                    self.latencies_ms.append((now - committed) * 1000)
                    self.last_at = now
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def run(seconds: float, rate: float) -> dict[str, object]:
    receiver = Receiver()
    await receiver.start()
    target = start_ratewire(
        name="ratewire-webhooks",
        env_extra={
            "RATEWIRE_WEBHOOKS__ALLOW_INSECURE_HTTP": "true",
            "RATEWIRE_WEBHOOKS__ALLOW_PRIVATE_NETWORKS": "true",
        },
    )
    try:
        base = target.post_url.rsplit("/", 1)[0]
        game = f"hook{int(time.time())}"
        async with httpx.AsyncClient(timeout=10) as http:
            created = await http.post(
                f"{base}/admin/webhooks",
                json={
                    "url": f"http://127.0.0.1:{receiver.port}/",
                    "topics": [f"rating.game.{game}"],
                },
                headers={"Authorization": f"Bearer {token('bench', 'ratings:admin')}"},
            )
            created.raise_for_status()
        started = time.time()
        ok, failed = await publish(target.post_url, game, rate, seconds)
        deadline = time.monotonic() + 60
        while len(receiver.ids) < ok and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        elapsed = receiver.last_at - started
        latencies = sorted(receiver.latencies_ms)
        return {
            "rate": rate,
            "seconds": seconds,
            "writes": ok,
            "write_errors": failed,
            "delivered": len(receiver.ids),
            "events_per_s": round(len(receiver.ids) / elapsed, 1) if elapsed > 0 else 0.0,
            "p50_ms": round(statistics.median(latencies), 2) if latencies else None,
            "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 2) if latencies else None,
            "max_ms": round(latencies[-1], 2) if latencies else None,
        }
    finally:
        target.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=0, help="writes/s; 0 = as fast as they go")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    result = asyncio.run(run(args.seconds, args.rate))
    print(json.dumps(result, indent=2))
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "results": [result]}
        args.json_out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
