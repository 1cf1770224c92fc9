"""The servers' TLS context, made one way for every port and for a reload's check."""

from __future__ import annotations

import ssl


class TlsFilesUnusable(OSError):
    """``tls.cert`` / ``tls.key`` cannot be read or do not hold a certificate and its key."""


def server_context(cert: str, key: str | None) -> ssl.SSLContext:
    """A server-side context serving ``cert`` with ``key`` (None: the key is in ``cert``);
    :class:`TlsFilesUnusable`, naming both files, if they cannot be served."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except OSError as exc:  # ssl.SSLError is one too
        raise TlsFilesUnusable(
            f"tls.cert {cert!r} / tls.key {key!r}: {exc.strerror or exc}"
        ) from exc
    return context
