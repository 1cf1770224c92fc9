"""The JWT key set: which key verifies a token (by its ``kid``), which key signs new ones.

Every key carries its own algorithm and is only ever used with it, so a token cannot choose
how its signature is checked: an HS256 token naming an RSA key's kid is refused, and the RSA
public key is never used as an HMAC secret (algorithm confusion).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from ratewire.config import ConfigError, JwtKeySettings, JwtSettings

log = logging.getLogger("ratewire.tokens")

#: RFC 7518 section 3.2: an HMAC key must be at least as long as the hash output.
MIN_SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class JwtKey:
    """One usable key: ``verifier`` checks signatures; ``signer`` (if any) makes them."""

    kid: str | None
    algorithm: str
    verifier: Any
    signer: Any | None


class KeySet:
    """The keys of ``auth.yml``: the legacy ``jwt.secret`` (tokens without ``kid``) and
    ``jwt.keys`` (tokens naming one)."""

    def __init__(self, keys: list[JwtKey]) -> None:
        if not keys:
            raise ConfigError(
                "auth: no JWT key configured: set jwt.secret (or RATEWIRE_JWT__SECRET) to 32+ "
                "random bytes, or jwt.keys; for a local trial run `ratewire serve --dev`"
            )
        self._by_kid = {key.kid: key for key in keys if key.kid is not None}
        self._unnamed = next((key for key in keys if key.kid is None), None)
        #: How many keys the set holds.
        self.size = len(keys)
        signers = [key for key in keys if key.signer is not None]
        #: The key new tokens are signed with: the newest (first listed) that can sign.
        self.signing: JwtKey | None = (
            next((key for key in signers if key.kid is not None), None) or self._unnamed
        )

    def for_kid(self, kid: object) -> JwtKey | None:
        """The key a token with header ``kid`` must verify with (None: no such key)."""
        if kid is None:
            # Tokens without kid: the guide's single secret; with only a key set, its signer.
            return self._unnamed or self.signing
        return self._by_kid.get(kid) if isinstance(kid, str) else None


def _read_pem(path: str, what: str, kid: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"auth: jwt.keys {kid!r}: cannot read {what} {path}: {exc.strerror}"
        ) from None


def _checked_secret(secret: str, where: str, *, dev: bool) -> bytes:
    raw = secret.encode()
    if len(raw) < MIN_SECRET_BYTES:
        message = (
            f"{where} is {len(raw)} bytes; at least {MIN_SECRET_BYTES} random bytes are needed "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
        )
        if not dev:
            raise ConfigError(f"auth: {message}, or run with --dev for a local trial")
        log.warning("%s: accepted because of --dev; never expose this server", message)
    return raw


def _asymmetric_key(settings: JwtKeySettings) -> JwtKey:
    kid, algorithm = settings.kid, settings.algorithm
    expected: type[Any] = rsa.RSAPublicKey if algorithm == "RS256" else ec.EllipticCurvePublicKey
    signer: Any = None
    try:
        if settings.private_key_file:
            pem = _read_pem(settings.private_key_file, "private_key_file", kid)
            signer = load_pem_private_key(pem, password=None)
            public: Any = signer.public_key()
        if settings.public_key or settings.public_key_file:
            pem = (
                settings.public_key.encode()
                if settings.public_key
                else _read_pem(str(settings.public_key_file), "public_key_file", kid)
            )
            public = load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        source = settings.private_key_file or settings.public_key_file
        where = f" in {source}" if source else ""
        raise ConfigError(f"auth: jwt.keys {kid!r}: not a usable PEM key{where}: {exc}") from None
    if not isinstance(public, expected):
        raise ConfigError(
            f"auth: jwt.keys {kid!r}: {algorithm} needs "
            f"{'an RSA' if algorithm == 'RS256' else 'an EC (P-256)'} key"
        )
    if algorithm == "ES256" and public.curve.name != "secp256r1":
        raise ConfigError(
            f"auth: jwt.keys {kid!r}: ES256 needs a P-256 key, not {public.curve.name}"
        )
    return JwtKey(kid, algorithm, public, signer)


def load_key_set(settings: JwtSettings, *, dev: bool = False) -> KeySet:
    """The key set ``settings`` describe. Raises :class:`ConfigError` (one line) for a short
    secret (unless ``dev``), an unreadable or mismatched PEM key, or no key at all."""
    keys: list[JwtKey] = []
    for key in settings.keys:
        if key.secret is not None:
            secret = _checked_secret(key.secret, f"jwt.keys {key.kid!r} secret", dev=dev)
            keys.append(JwtKey(key.kid, key.algorithm, secret, secret))
        else:
            keys.append(_asymmetric_key(key))
    if settings.secret is not None:
        secret = _checked_secret(settings.secret, "jwt.secret", dev=dev)
        keys.append(JwtKey(None, settings.algorithm, secret, secret))
    return KeySet(keys)
