"""Tokens remembered after their first verification still expire and can still be revoked."""

from __future__ import annotations

import time

import jwt
import pytest

from ratewire.config import JwtSettings
from ratewire.security.revocation import Revocation
from ratewire.security.tokens import TokenExpired, TokenRevoked, TokenService

SECRET = "unit-tokens-secret-0123456789abcdef0123"


def test_a_remembered_token_expires_and_can_be_revoked() -> None:
    tokens = TokenService(JwtSettings(secret=SECRET, leeway_seconds=0))
    now = time.time()
    # Three seconds of life: a loaded CI machine can stall longer than one between lines.
    short = jwt.encode({"sub": "7", "iat": now, "exp": now + 3, "jti": "a"}, SECRET, "HS256")
    assert tokens.verify(short).sub == "7"
    assert tokens.verify(short).sub == "7"  # from memory
    time.sleep(max(0.0, now + 3.1 - time.time()))
    with pytest.raises(TokenExpired):
        tokens.verify(short)

    lasting = tokens.issue("8")
    principal = tokens.verify(lasting)
    tokens.deny_list.add(Revocation("sub", "8", time.time(), time.time() + 60))
    with pytest.raises(TokenRevoked):
        tokens.verify(lasting)
    assert principal.sub == "8"
