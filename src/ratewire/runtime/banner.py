"""What ``ratewire serve`` says to a person at a terminal once both ports listen: where to
go next (REST, WebSockets, /docs, /dashboard), the storage in use and, in ``--dev``, the
command that makes a token."""

from __future__ import annotations

from ratewire import __version__
from ratewire.config import Settings
from ratewire.logs import redact


def start_banner(settings: Settings, dev: bool, rest_served: bool, ws_served: bool) -> str:
    """The banner of a server with ``settings`` serving REST and/or WebSockets."""
    tls = bool(settings.tls.cert)
    host = settings.server.host
    # A wildcard address is no place to open: this machine answers on loopback too.
    shown = "localhost" if host in ("", "0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    rest = f"{'https' if tls else 'http'}://{shown}:{settings.server.port}"
    ws = "wss" if tls else "ws"
    lines = [f"ratewire {__version__} is ready{' (dev mode)' if dev else ''}"]
    if rest_served:
        lines.append(f"  REST       {rest}")
    if ws_served:
        endpoints = f"{ws}://{shown}:{settings.server.port}/ws"
        if settings.modules.websocket.enabled:
            endpoints = f"{ws}://{shown}:{settings.modules.websocket.port}/  and  {endpoints}"
        lines.append(f"  WebSocket  {endpoints}")
    if rest_served:
        lines += [f"  API docs   {rest}/docs", f"  Dashboard  {rest}/dashboard"]
    storage = settings.storage
    where = redact(storage.resolved_url()) or "none (history from the broker)"
    lines.append(f"  Storage    {storage.backend}: {where}")
    if settings.broker.clustered:
        broker = settings.broker
        lines.append(f"  Broker     {broker.backend}: {redact(broker.resolved_url())}")
    if dev:
        lines.append(
            "  Next       ratewire token 7   (a token for user 7; run it in this directory)"
        )
    lines.append("Ctrl-C stops it.")
    return "\n".join(lines)
