"""Per-delivery CPU cost of the fan-out, in process: the hub publishing events to N real
:class:`~ratewire.realtime.session.Session` objects whose peers write to fake transports.

It measures what ratewire adds per delivery on top of the socket write (the write itself, the
kernel's part, is what `bench.fanout` measures end to end): what the hub, the session and the
peer adapter do between "event published" and "transport.send called".

    python -m bench.hub --subs 1000 --events 2000
    python -m bench.hub --json-out bench/results/hub.json

A delivery is one frame handed to one subscriber's transport. The figure is the median over
``--repeat`` rounds of ``--events`` events each (microseconds per delivery). ``--batch K``
publishes K events at a time, as a group commit hands them over: each subscriber then gets one
socket write per K frames.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ratewire.config import Settings
from ratewire.domain import RatingEvent
from ratewire.realtime.hub import Hub
from ratewire.realtime.picows_server import PicowsPeer
from ratewire.realtime.session import RealtimeContext
from ratewire.realtime.slots import ConnectionSlots
from ratewire.security.tokens import Principal, TokenService


class FakeTransport:
    """Counts what picows' WSTransport.send would write (no syscall)."""

    __slots__ = ("bytes_sent", "frames", "is_close_frame_sent", "underlying_transport")

    def __init__(self) -> None:
        self.underlying_transport = _FakeUnderlying()
        self.frames = 0
        self.bytes_sent = 0
        self.is_close_frame_sent = False

    def send(self, msg_type: Any, message: bytes, fin: bool = True, rsv1: bool = False) -> None:
        self.frames += 1
        self.bytes_sent += len(message)


class _FakeUnderlying:
    """The raw transport under picows: pre-framed writes of several frames land here."""

    __slots__ = ("bytes_written", "writes")

    def __init__(self) -> None:
        self.writes = 0
        self.bytes_written = 0

    def set_write_buffer_limits(self, high: int) -> None:
        return None

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.bytes_written += len(data)


class _NoHistory:
    epoch = "bench"


def _event(seq: int, game: str) -> RatingEvent:
    now = datetime.now(UTC)
    data = {
        "id": f"r_{seq:026d}",
        "gameId": game,
        "userId": f"u{seq}",
        "score": 1 + seq % 5,
        "comment": "a typical comment of a few words",
        "timestamp": now.isoformat(),
        "createdAt": now.isoformat(),
        "updatedAt": now.isoformat(),
        "version": 1,
    }
    return RatingEvent(seq, "created", game, f"u{seq}", seq, 1, data, now)


async def measure(subs: int, events: int, repeat: int, batch: int = 1) -> dict[str, float]:
    settings = Settings.model_validate({"jwt": {"secret": "b" * 32}})
    hub = Hub()
    ctx = RealtimeContext(
        hub=hub,
        store=_NoHistory(),  # type: ignore[arg-type]
        tokens=TokenService(settings.jwt),
        limits=settings.limits,
        summary_wire=lambda summary: {},
        sessions=set(),
        slots=ConnectionSlots(subs + 1, subs + 1, subs + 1),
    )
    game = "42"
    topic = f"rating.game.{game}"
    transports = []
    principal = Principal(sub="bench", scopes=frozenset(), jti="j", expires_at=time.time() + 3600)
    for index in range(subs):
        peer = PicowsPeer(ctx, principal, "127.0.0.1")
        transport = FakeTransport()
        peer.on_ws_connected(transport)  # type: ignore[arg-type]
        session = peer.session
        assert session is not None
        hub.begin(topic, session)
        hub.ready(topic, session, 0, 0)
        transports.append(transport)
        del index
    for transport in transports:
        transport.frames = 0  # connection_success
    rounds = []
    seq = 0
    for _ in range(repeat):
        round_events = [_event(seq + i + 1, game) for i in range(events)]
        seq += events
        gc.collect()
        groups = [round_events[i : i + batch] for i in range(0, len(round_events), batch)]
        # An earlier checkout (PYTHONPATH, for before/after) may have no batch publish.
        publish_batch = getattr(hub, "publish_batch", None)
        if publish_batch is None:
            assert batch == 1, "this hub publishes one event at a time"
            publish_batch = lambda group: hub.publish(group[0])  # noqa: E731
        started = time.perf_counter_ns()
        for group in groups:
            publish_batch(group)
        rounds.append((time.perf_counter_ns() - started) / (events * subs) / 1000)
    writes = [t.frames + t.underlying_transport.writes for t in transports]
    assert all(w == -(-events // batch) * repeat for w in writes), "a subscriber missed frames"
    return {
        "socket_writes_per_event": round(writes[0] / (events * repeat), 3),
        "us_per_delivery": round(statistics.median(rounds), 4),
        "us_per_delivery_min": round(min(rounds), 4),
        "us_per_event": round(statistics.median(rounds) * subs, 2),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subs", type=int, default=1000)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="events published together (a group commit's); 1 = one at a time",
    )
    parser.add_argument("--label", default="", help="a name for this run in the JSON file")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.subs, args.events, args.repeat, args.batch))
    print(
        f"{args.subs} subscribers, {args.events} events x {args.repeat} in batches of "
        f"{args.batch}, {result['socket_writes_per_event']:g} socket writes per event: "
        f"{result['us_per_delivery']:.3f} us per delivery "
        f"(min {result['us_per_delivery_min']:.3f}), {result['us_per_event']:.0f} us per event"
    )
    if args.json_out is not None:
        runs = json.loads(args.json_out.read_text()) if args.json_out.exists() else []
        runs.append(
            {
                "label": args.label,
                "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "machine": f"{os.cpu_count()} cores",
                "subs": args.subs,
                "events": args.events,
                "batch": args.batch,
                **result,
            }
        )
        args.json_out.write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
