"""A minimal blocking REST client for the command line's admin calls (``ratewire revoke``,
``ratewire webhook``)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any


class AdminRequestFailed(Exception):
    """The server refused the call or could not be reached; the message says which."""


def admin_request(
    base_url: str, token: str, method: str, path: str, body: dict[str, Any] | None = None
) -> Any:
    """``method path`` on ``base_url`` with ``token``; the decoded JSON answer."""
    url = base_url.rstrip("/") + path
    request = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=ssl.create_default_context()) as r:
            answer = r.read()
            return json.loads(answer) if answer else None
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail")
        except (ValueError, AttributeError):
            detail = None
        raise AdminRequestFailed(f"{method} {url}: {exc.code} {detail or exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminRequestFailed(f"{method} {url}: cannot reach the server ({reason})") from None
