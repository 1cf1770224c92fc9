"""``GET /dashboard``: the live dashboard, one self-contained page (no build step, no CDN).

The page's script and style are inline, so the Content-Security-Policy allows exactly those
two (by hash) and connections to this origin: an injected script would not run.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib import resources

from fastapi import APIRouter
from starlette.responses import Response

router = APIRouter()


def _hash_of(page: str, tag: str) -> str:
    found = re.search(rf"<{tag}>(.*?)</{tag}>", page, re.DOTALL)
    assert found is not None, f"dashboard page has no <{tag}>"
    digest = hashlib.sha256(found.group(1).encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


@cache
def dashboard_page() -> tuple[bytes, str]:
    """The page and its Content-Security-Policy (read once)."""
    page = resources.files("ratewire.dashboard").joinpath("index.html").read_text("utf-8")
    policy = "; ".join(
        (
            "default-src 'none'",
            f"script-src {_hash_of(page, 'script')}",
            f"style-src {_hash_of(page, 'style')}",
            "connect-src 'self'",  # fetch and the WebSocket: this origin only
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
    return page.encode(), policy


@router.get("/dashboard", include_in_schema=False)
async def dashboard() -> Response:
    page, policy = dashboard_page()
    return Response(
        page,
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": policy,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )
