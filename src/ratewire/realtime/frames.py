"""Server -> client frames, encoded once as bytes.

``rating_update`` is on the hot path: its data is encoded once per event and spliced into one
frame per topic, and that one frame is written to every subscriber. Every string goes through
the encoder, validated or not: a topic name spliced in raw once let an identifier ending in a
newline (accepted by a ``$`` that matches before it) break every ``rating.game.*`` reader.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

_TEXT_FIN = 0x81  # FIN + opcode 1 (text); server frames are never masked
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


#: The three event kinds, encoded once (a frame is built per event and topic).
_KINDS = {kind: orjson.dumps(kind) for kind in ("created", "updated", "deleted")}


def rating_update(topic: str, offset: int, kind: str, data_json: bytes) -> bytes:
    """``{"type":"rating_update","topic":T,"offset":N,"event":K,"data":{...}}``."""
    return b'{"type":"rating_update","topic":%s,"offset":%d,"event":%s,"data":%s}' % (
        orjson.dumps(topic),
        offset,
        _KINDS.get(kind) or orjson.dumps(kind),
        data_json,
    )


def control(frame_type: str, message_id: Any = None, **fields: Any) -> bytes:
    """A reply or notice frame; ``message_id`` (the client's ``id``) is echoed when given."""
    body: dict[str, Any] = {"type": frame_type, **fields}
    if message_id is not None:
        body["id"] = message_id
    return orjson.dumps(body)


def error(code: str, message: str, message_id: Any = None) -> bytes:
    """``{"type":"error","code":...,"message":...}``; the connection stays open."""
    return control("error", message_id, code=code, message=message)


def websocket_text(payload: bytes) -> bytes:
    """``payload`` as one complete WebSocket text frame as a server sends it (RFC 6455 5.2:
    FIN, opcode 1, no mask), for writing several frames to a socket in one call."""
    size = len(payload)
    if size < 126:
        return _SHORT.pack(_TEXT_FIN, size) + payload
    if size < 65536:
        return _MEDIUM.pack(_TEXT_FIN, 126, size) + payload
    return _LONG.pack(_TEXT_FIN, 127, size) + payload
