"""Verify ratewire's webhooks (the Standard Webhooks signature scheme) in your receiver.

Each webhook POST carries ``webhook-id`` (the same on every retry of one event, different for
every event: keep the ids you have handled to process each event exactly once),
``webhook-timestamp`` (seconds since the epoch) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, keyed with the base64-decoded part
of the ``whsec_...`` secret ratewire showed when the webhook was created)::

    from ratewire.client.webhooks import WebhookVerificationError, verify

    try:
        update = verify(request.headers, await request.body(), SECRET)
    except WebhookVerificationError:
        return Response(status_code=400)
    if seen.add_if_new(request.headers["webhook-id"]):
        handle(update)            # {"type": "rating_update", "topic", "offset", "epoch", ...}
    return Response(status_code=204)

ratewire signs with :func:`sign`, so the two cannot disagree.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any

import orjson

#: How far ``webhook-timestamp`` may be from now, in seconds (replayed old messages fail).
TOLERANCE_SECONDS = 300


class WebhookVerificationError(ValueError):
    """The message is not a webhook signed with this secret (or it is too old or too new)."""


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise WebhookVerificationError("the secret is not whsec_ and base64") from None


def sign(message_id: str, timestamp: int, body: bytes, secret: str) -> str:
    """The ``webhook-signature`` header value of a message."""
    signed = b"%s.%d.%s" % (message_id.encode(), timestamp, body)
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
    *,
    now: float | None = None,
    tolerance: float = TOLERANCE_SECONDS,
) -> dict[str, Any]:
    """The webhook's JSON payload, if ``headers`` carry a valid signature of ``body`` under
    ``secret``; else :class:`WebhookVerificationError`. Header names are case-insensitive."""
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        message_id = lowered["webhook-id"]
        stamp = lowered["webhook-timestamp"]
        signatures = lowered["webhook-signature"]
    except KeyError as missing:
        raise WebhookVerificationError(f"no {missing.args[0]} header") from None
    if not stamp.isdigit():
        raise WebhookVerificationError("webhook-timestamp is not a number of seconds")
    timestamp = int(stamp)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too far from now")
    expected = sign(message_id, timestamp, body, secret).partition(",")[2]
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            payload: dict[str, Any] = orjson.loads(body)
            return payload
    raise WebhookVerificationError("no valid v1 signature")


__all__ = ["TOLERANCE_SECONDS", "WebhookVerificationError", "sign", "verify"]
