"""``SIGHUP`` (``ratewire reload``): re-read the TLS certificate and key and the JWT key set
without dropping a connection.

- TLS: the listening ports' :class:`ssl.SSLContext` objects load the new chain in place, so
  new handshakes use it; a live connection keeps the certificate it was set up with (its
  SSL object holds its own reference). The files are checked on a scratch context first: a
  bad one is refused with one line naming it, and the old certificate stays in use.
- JWT: the token service swaps in the new key set and forgets every token it had verified,
  so a token signed with a removed key is refused at its next check; a key set that does
  not load is refused with one line, and the old keys stay in use.

Reading two small PEM files (and the settings files) happens on the event loop, once per
signal: a few hundred microseconds, not worth a thread.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ratewire.config import ConfigError, Settings, TlsSettings
from ratewire.security.tokens import TokenService
from ratewire.serving.tls import TlsFilesUnusable, server_context

log = logging.getLogger("ratewire.reload")
KEPT_CERTIFICATE = "the previous certificate stays in use"


def reload_secrets(
    reread: Callable[[], Settings] | None,
    contexts: Sequence[ssl.SSLContext],
    tokens: TokenService,
) -> None:
    """Re-read the settings files (``reread``), then the certificate and the key set."""
    if reread is None:
        log.warning("reload: this server was not started from settings files; nothing to do")
        return
    try:
        settings = reread()
    except ConfigError as exc:
        log.error("reload refused: %s; the previous certificate and keys stay in use", exc)
        return
    reload_certificate(contexts, settings.tls)
    try:
        count = tokens.replace_keys(settings.jwt)
    except ConfigError as exc:
        log.error("reload refused the JWT key set: %s; the previous keys stay in use", exc)
        return
    log.info("reload: JWT key set re-read (%d keys); tokens are verified against it", count)


def reload_certificate(contexts: Sequence[ssl.SSLContext], tls: TlsSettings) -> bool:
    """Load ``tls``'s certificate and key into every context (True), or refuse them, with one
    log line naming the bad file, and change nothing (False)."""
    if not contexts:
        if tls.cert:
            log.warning("reload: TLS was off at start; a restart is needed to turn it on")
        return False
    if not tls.cert:
        log.warning("reload: tls.cert is no longer set; TLS stays on until a restart")
        return False
    key_path = tls.key or tls.cert
    problem = _unusable(tls.cert, key_path)
    if problem is not None:
        log.error("reload refused %s; %s", problem, KEPT_CERTIFICATE)
        return False
    for context in contexts:
        context.load_cert_chain(tls.cert, tls.key)
    log.info("reload: new TLS handshakes use the certificate in %s", tls.cert)
    return True


def _unusable(cert: str, key: str) -> str | None:
    """Why the certificate file or the key file cannot be served (naming it), or None."""
    for path, what in ((cert, "certificate"), (key, "private key")):
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            return f"the TLS {what} {path}: {exc.strerror}"
        try:
            if what == "certificate":
                x509.load_pem_x509_certificates(pem)
            else:
                load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            return f"the TLS {what} {path}: not a usable PEM {what} ({exc})"
    try:
        server_context(cert, key)  # a scratch one: the contexts in use change only if it loads
    except TlsFilesUnusable as exc:
        return f"the TLS private key {key}: it does not go with the certificate {cert} ({exc})"
    return None
