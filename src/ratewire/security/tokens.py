"""JWT issue and verification (PyJWT; algorithm pinned per key, ``exp`` required, lifetime
bounded, deny list consulted)."""

from __future__ import annotations

import logging
import math
import time
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from ratewire.config import JwtSettings
from ratewire.domain.rating import storable_text
from ratewire.security.keys import load_key_set
from ratewire.security.revocation import REVOKED_REASON, DenyList

# Short secrets stop the start (security.keys) unless --dev, which warns once; PyJWT would
# warn again on every signature.
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)
log = logging.getLogger("ratewire.tokens")

SCOPE_ADMIN = "ratings:admin"
#: Verified tokens remembered at most (see TokenService.verify).
VERIFIED_TOKENS_KEPT = 10_000
SCOPE_WRITE_ANY = "ratings:write:any"
#: A token with this scope and none that grants writing is read-only (an agent that only
#: watches, say): it reads and subscribes, and every write is 403.
SCOPE_READ = "ratings:read"
#: Scopes that grant writing (one's own ratings, or anyone's).
SCOPE_WRITE = "ratings:write"


class InvalidToken(Exception):
    """The token cannot be used. ``reason`` is the text clients see (docs/protocol.md)."""

    def __init__(self, reason: str = "Invalid token") -> None:
        super().__init__(reason)
        self.reason = reason
        #: The (sub, jti) the refused token claims, unverified: for the audit log.
        self.claimed: tuple[str | None, str | None] = (None, None)


class TokenExpired(InvalidToken):
    def __init__(self) -> None:
        super().__init__("Token expired")


class TokenRevoked(InvalidToken):
    def __init__(self) -> None:
        super().__init__(REVOKED_REASON)


def scopes_read_only(scopes: Iterable[str]) -> bool:
    """A token with these scopes is read-only: ``ratings:read`` and none that grants writing."""
    held = set(scopes)
    return SCOPE_READ in held and not held & {SCOPE_WRITE, SCOPE_WRITE_ANY, SCOPE_ADMIN}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for."""

    sub: str
    jti: str | None
    scopes: frozenset[str]
    expires_at: float
    topics: tuple[str, ...] | None = None  # allowed topic patterns, if the token limits them
    issued_at: float | None = None

    @property
    def is_admin(self) -> bool:
        return SCOPE_ADMIN in self.scopes

    @property
    def read_only(self) -> bool:
        """Scope ``ratings:read`` and none that grants writing."""
        return scopes_read_only(self.scopes)

    def may_write_for(self, user_id: str) -> bool:
        """The ownership rule: own ratings only, unless admin or ``ratings:write:any`` (the
        service refuses read-only tokens before asking)."""
        return user_id == self.sub or self.is_admin or SCOPE_WRITE_ANY in self.scopes


class TokenService:
    """Issues and verifies the JWTs of the key set in ``auth.yml`` (see security.keys), and
    refuses tokens on the deny list (see security.revocation)."""

    def __init__(
        self, settings: JwtSettings, *, dev: bool = False, deny_list: DenyList | None = None
    ) -> None:
        self._settings = settings
        self._dev = dev
        self._keys = load_key_set(settings, dev=dev)
        self._max_ttl = settings.max_ttl_seconds
        #: Read-only tokens may live longer (a dashboard on a wall screen), never shorter.
        self._max_read_only_ttl = max(self._max_ttl, settings.max_read_only_ttl_seconds or 0)
        self._leeway = settings.leeway_seconds
        self._default_ttl = settings.expiry_seconds
        #: Revocations in force; every verification consults it.
        self.deny_list = deny_list if deny_list is not None else DenyList()
        self._verified: dict[str, Principal] = {}
        if self._default_ttl > self._max_ttl:
            log.warning(
                "jwt.expiry_seconds %d exceeds jwt.max_ttl_seconds %d: tokens are issued for %d s",
                self._default_ttl,
                self._max_ttl,
                self._max_ttl,
            )
            self._default_ttl = self._max_ttl

    def replace_keys(self, settings: JwtSettings) -> int:
        """Verify (and sign) with the key set ``settings`` describe from now on (SIGHUP); how
        many keys it holds. Raises :class:`~ratewire.config.ConfigError`, keeping the current
        keys, when it does not load. Every token verified before is verified again at its
        next use: one signed with a removed key is refused from then on."""
        keys = load_key_set(settings, dev=self._dev)
        self._keys = keys
        self._verified = {}
        return keys.size

    @property
    def max_lifetime(self) -> float:
        """The longest any acceptable token can still verify from now (revocation lifetime)."""
        return self._max_read_only_ttl + 2 * self._leeway

    def max_ttl_for(self, scopes: Iterable[str]) -> int:
        """The longest lifetime a token with ``scopes`` may have (jwt.max_ttl_seconds, or
        jwt.max_read_only_ttl_seconds for a read-only one)."""
        return self._max_read_only_ttl if scopes_read_only(scopes) else self._max_ttl

    def issue(
        self,
        sub: str,
        *,
        scope: str | None = None,
        ttl_seconds: int | None = None,
        topics: list[str] | None = None,
    ) -> str:
        """A signed token for ``sub`` that expires after ``ttl_seconds`` (default: configured)."""
        key = self._keys.signing
        if key is None or key.signer is None:
            raise ValueError("no configured key can sign (every jwt.keys entry is verify-only)")
        ttl = ttl_seconds or self._default_ttl
        scopes = (scope or "").split()
        read_only = scopes_read_only(scopes)
        limit = self.max_ttl_for(scopes)
        if ttl > limit:
            setting = "jwt.max_read_only_ttl_seconds" if read_only else "jwt.max_ttl_seconds"
            hint = (
                ""
                if read_only
                else " (read-only tokens, --scope ratings:read, may live up to "
                "jwt.max_read_only_ttl_seconds)"
            )
            raise ValueError(f"a {ttl} s token would be refused: {setting} is {limit}{hint}")
        now = time.time()
        claims: dict[str, object] = {
            "sub": sub,
            # Millisecond precision: a token issued right after a revocation of its user
            # (kind sub) must tell it was issued after it.
            "iat": round(now, 3),
            "exp": int(now) + ttl,
            "jti": uuid.uuid4().hex,
        }
        if scope:
            claims["scope"] = scope
        if topics is not None:
            claims["topics"] = topics
        headers = {"kid": key.kid} if key.kid is not None else None
        return jwt.encode(claims, key.signer, algorithm=key.algorithm, headers=headers)

    def valid_until(self, principal: Principal) -> float:
        """When ``principal``'s token stops verifying (its ``exp`` plus the allowed leeway)."""
        return principal.expires_at + self._leeway

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; :class:`InvalidToken` / :class:`TokenExpired` else
        (with what the token claims in ``claimed``, for the audit log).

        A client sends the same token with every request for minutes: a token verified once
        is remembered (its signature cannot change), and each use checks only what can:
        expiry and the deny list. Measured: signature checking was 9% of a write."""
        known = self._verified.get(token)
        if known is not None:
            if time.time() > known.expires_at + self._leeway:
                del self._verified[token]
                raise TokenExpired()
            if self.deny_list.is_revoked(known.sub, known.jti, known.issued_at):
                raise TokenRevoked()
            return known
        try:
            principal = self._verify(token)
        except InvalidToken as refused:
            refused.claimed = unverified_identity(token)
            raise
        if len(self._verified) >= VERIFIED_TOKENS_KEPT:
            self._verified.clear()  # cheap and rare: tokens live 15 minutes
        self._verified[token] = principal
        return principal

    def _verify(self, token: str) -> Principal:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise InvalidToken() from None
        key = self._keys.for_kid(kid)
        if key is None:
            raise InvalidToken(f"Invalid token: unknown key id {str(kid)[:64]!r}")
        try:
            claims = jwt.decode(
                token,
                key.verifier,
                algorithms=[key.algorithm],  # pinned per key: no algorithm confusion
                options={"require": ["exp", "sub"]},
                leeway=self._leeway,
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired() from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("Invalid token: not valid yet (nbf or iat in the future)") from None
        except jwt.PyJWTError:
            raise InvalidToken() from None
        expires_at = _seconds(claims["exp"])
        if expires_at is None:
            # PyJWT takes any int()-able exp ("1700000000" too); arithmetic on it would fail.
            raise InvalidToken("Invalid token: exp must be a number of seconds")
        issued_at = _seconds(claims.get("iat"))
        start = issued_at if issued_at is not None else time.time()
        sub, scope, topics = claims.get("sub"), claims.get("scope", ""), claims.get("topics")
        if not isinstance(sub, str) or not sub or not isinstance(scope, str):
            raise InvalidToken()
        limit = self.max_ttl_for(scope.split())
        if expires_at - start > limit + self._leeway:
            raise InvalidToken(f"Invalid token: it lives longer than {limit} s")
        if topics is not None and not (
            isinstance(topics, list) and all(isinstance(t, str) for t in topics)
        ):
            raise InvalidToken()
        jti = claims.get("jti")
        jti = jti if isinstance(jti, str) else None
        if self.deny_list.is_revoked(sub, jti, issued_at):
            raise TokenRevoked()
        return Principal(
            sub=sub,
            jti=jti,
            scopes=frozenset(scope.split()),
            expires_at=expires_at,
            topics=tuple(topics) if topics is not None else None,
            issued_at=issued_at,
        )


def _seconds(value: object) -> float | None:
    """A time claim as seconds, or None unless it is a JSON number a float can hold."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return seconds if math.isfinite(seconds) else None


def unverified_identity(token: str) -> tuple[str | None, str | None]:
    """The ``sub`` and ``jti`` a token claims, read without verifying it: for the audit
    entry of a refused token (never the token itself). (None, None) when unreadable."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None, None
    sub, jti = claims.get("sub"), claims.get("jti")
    # Anyone can put anything in an unsigned claim: a lone surrogate once stopped the audit
    # log's writer (no store or JSON encoder takes one), so these are made storable here.
    return (
        storable_text(sub[:255]) if isinstance(sub, str) else None,
        storable_text(jti[:255]) if isinstance(jti, str) else None,
    )
