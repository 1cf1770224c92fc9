"""JWT issue and verification (PyJWT, algorithm pinned, ``exp`` required)."""

from __future__ import annotations

import logging
import time
import uuid
import warnings
from dataclasses import dataclass

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from ratewire.config import JwtSettings

# The guide's example secret is shorter than RFC 7518 recommends; ratewire warns once at start
# (TokenService) instead of on every signature.
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)
log = logging.getLogger("ratewire.tokens")

SCOPE_ADMIN = "ratings:admin"
SCOPE_WRITE_ANY = "ratings:write:any"


class InvalidToken(Exception):
    """The token cannot be used. ``reason`` is the text clients see (PROTOCOL.md section 3)."""

    def __init__(self, reason: str = "Invalid token") -> None:
        super().__init__(reason)
        self.reason = reason


class TokenExpired(InvalidToken):
    def __init__(self) -> None:
        super().__init__("Token expired")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for."""

    sub: str
    jti: str | None
    scopes: frozenset[str]
    expires_at: float
    topics: tuple[str, ...] | None = None  # allowed topic patterns, if the token limits them

    @property
    def is_admin(self) -> bool:
        return SCOPE_ADMIN in self.scopes

    def may_write_for(self, user_id: str) -> bool:
        """The ownership rule: own ratings only, unless admin or ``ratings:write:any``."""
        return user_id == self.sub or self.is_admin or SCOPE_WRITE_ANY in self.scopes


class TokenService:
    """Issues and verifies the HS* JWTs configured in ``auth.yml``."""

    def __init__(self, settings: JwtSettings) -> None:
        self._settings = settings
        self._algorithms = [settings.algorithm]
        self._max_ttl = settings.max_ttl_seconds
        self._default_ttl = settings.expiry_seconds
        if self._default_ttl > self._max_ttl:
            log.warning(
                "jwt.expiry_seconds %d exceeds jwt.max_ttl_seconds %d: tokens are issued for %d s",
                self._default_ttl,
                self._max_ttl,
                self._max_ttl,
            )
            self._default_ttl = self._max_ttl
        if len(settings.secret.encode()) < 32:
            log.warning(
                "jwt.secret is shorter than 32 bytes; set a long random secret in auth.yml "
                "or RATEWIRE_JWT__SECRET before exposing this server"
            )

    def issue(
        self,
        sub: str,
        *,
        scope: str | None = None,
        ttl_seconds: int | None = None,
        topics: list[str] | None = None,
    ) -> str:
        """A signed token for ``sub`` that expires after ``ttl_seconds`` (default: configured)."""
        ttl = ttl_seconds or self._default_ttl
        if ttl > self._max_ttl:
            raise ValueError(
                f"a {ttl} s token would be refused: jwt.max_ttl_seconds is {self._max_ttl}"
            )
        now = int(time.time())
        claims: dict[str, object] = {
            "sub": sub,
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        if scope:
            claims["scope"] = scope
        if topics is not None:
            claims["topics"] = topics
        return jwt.encode(claims, self._settings.secret, algorithm=self._settings.algorithm)

    def valid_until(self, principal: Principal) -> float:
        """When ``principal``'s token stops verifying (its ``exp`` plus the allowed leeway)."""
        return principal.expires_at + self._settings.leeway_seconds

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; :class:`InvalidToken` / :class:`TokenExpired` else."""
        try:
            claims = jwt.decode(
                token,
                self._settings.secret,
                algorithms=self._algorithms,
                options={"require": ["exp", "sub"]},
                leeway=self._settings.leeway_seconds,
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired() from None
        except jwt.PyJWTError:
            raise InvalidToken() from None
        issued = claims.get("iat")
        start = issued if isinstance(issued, int | float) else time.time()
        if claims["exp"] - start > self._max_ttl + self._settings.leeway_seconds:
            raise InvalidToken(f"Invalid token: it lives longer than {self._max_ttl} s")
        sub, scope, topics = claims.get("sub"), claims.get("scope", ""), claims.get("topics")
        if not isinstance(sub, str) or not sub or not isinstance(scope, str):
            raise InvalidToken()
        if topics is not None and not (
            isinstance(topics, list) and all(isinstance(t, str) for t in topics)
        ):
            raise InvalidToken()
        jti = claims.get("jti")
        return Principal(
            sub=sub,
            jti=jti if isinstance(jti, str) else None,
            scopes=frozenset(scope.split()),
            expires_at=float(claims["exp"]),
            topics=tuple(topics) if topics is not None else None,
        )
