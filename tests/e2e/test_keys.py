"""JWT keys on a real server: a key set selected by ``kid`` (rotation), RS256 and ES256
verify-only keys for tokens issued elsewhere, no algorithm confusion, ``nbf``/``iat``
honoured, and secrets that are too short (or missing) stop the start unless ``--dev``."""

from __future__ import annotations

import asyncio
import stat
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tests.e2e.wsclient import WsClient
from tests.support.cli import run_ratewire
from tests.support.server import ServerProcess

pytestmark = pytest.mark.e2e

NEW_SECRET = "new-key-0123456789abcdef0123456789abcdef"
OLD_SECRET = "old-key-0123456789abcdef0123456789abcdef"


def pem_public(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def drop_lines(path: Path, marker: str) -> None:
    kept = [line for line in path.read_text().splitlines() if marker not in line]
    path.write_text("\n".join(kept) + "\n")


async def rest_status(server: ServerProcess, token: str) -> tuple[int, str]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        answer = await http.put(
            "/games/keys/ratings/7",
            json={"score": 5},
            headers={"Authorization": f"Bearer {token}"},
        )
    return answer.status_code, answer.json().get("detail", "")


async def ws_outcome(url: str, token: str) -> str | tuple[int | None, str | None]:
    async with await WsClient.open(url, token) as client:
        try:
            return str((await client.recv())["type"])
        except Exception:
            return await client.closed_with()


@pytest.fixture
def keyed_server(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> tuple[ServerProcess, rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "idp.pem").write_bytes(pem_public(rsa_key))
    ec_pem = pem_public(ec_key).decode().replace("\n", "\n        ")
    (tmp_path / "auth.yml").write_text(
        "jwt:\n"
        "  keys:\n"
        f"    - {{kid: new, algorithm: HS256, secret: {NEW_SECRET}}}\n"
        f"    - {{kid: old, algorithm: HS256, secret: {OLD_SECRET}}}\n"
        f"    - {{kid: idp, algorithm: RS256, public_key_file: {tmp_path / 'idp.pem'}}}\n"
        "    - kid: edge\n"
        "      algorithm: ES256\n"
        "      public_key: |\n"
        f"        {ec_pem}\n"
    )
    server = server_factory(args=("--auth", str(tmp_path / "auth.yml")))
    return server, rsa_key, ec_key


async def test_key_set_rotation_and_public_key_tokens_on_rest_and_websocket(
    keyed_server: tuple[ServerProcess, rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey],
) -> None:
    server, rsa_key, ec_key = keyed_server
    now = int(time.time())
    claims = {"sub": "7", "iat": now, "exp": now + 300}
    accepted = {
        "new": jwt.encode(claims, NEW_SECRET, "HS256", headers={"kid": "new"}),
        "old (still listed)": jwt.encode(claims, OLD_SECRET, "HS256", headers={"kid": "old"}),
        "RS256 from the idp": jwt.encode(claims, rsa_key, "RS256", headers={"kid": "idp"}),
        "ES256": jwt.encode(claims, ec_key, "ES256", headers={"kid": "edge"}),
        "no kid: the legacy secret": jwt.encode(claims, server.secret, "HS256"),
    }
    for name, token in accepted.items():
        assert (await rest_status(server, token))[0] in (200, 201), name
        for url in (server.module_ws_url, server.ws_url):
            assert await ws_outcome(url, token) == "connection_success", name
    # `ratewire token` signs with the newest key that can sign.
    printed = await asyncio.to_thread(
        run_ratewire,
        "token",
        "7",
        "--auth",
        server.args[1],
        cwd=server.workdir,
        env={"RATEWIRE_JWT__SECRET": server.secret},
    )
    assert printed.returncode == 0, printed.stderr
    issued = printed.stdout.strip()
    assert jwt.get_unverified_header(issued)["kid"] == "new"
    assert (await rest_status(server, issued))[0] in (200, 201)

    # Rotation done: the old key is removed, and what it signed stops working at once.
    drop_lines(Path(server.args[1]), "kid: old")
    server.restart()
    assert (await rest_status(server, accepted["old (still listed)"])) == (
        401,
        "Invalid token: unknown key id 'old'",
    )
    assert (await rest_status(server, accepted["new"]))[0] in (200, 201)


async def test_algorithm_confusion_and_forged_headers_are_refused(
    keyed_server: tuple[ServerProcess, rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey],
) -> None:
    server, rsa_key, _ = keyed_server
    now = int(time.time())
    claims = {"sub": "7", "iat": now, "exp": now + 300}
    public_pem = pem_public(rsa_key)
    # PyJWT refuses to HMAC-sign with a PEM key; an attacker's library would not. Build it.
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    def hs256_with(secret: bytes, header: dict[str, str]) -> str:
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(signature)}"

    refused = {
        "HS256 with the RSA public key, kid of the RSA key": hs256_with(
            public_pem, {"alg": "HS256", "typ": "JWT", "kid": "idp"}
        ),
        "HS256 with the RSA public key, no kid": hs256_with(
            public_pem, {"alg": "HS256", "typ": "JWT"}
        ),
        "RS256 token naming an HS key": jwt.encode(
            claims, rsa_key, "RS256", headers={"kid": "new"}
        ),
        "alg none": b64(b'{"alg":"none","kid":"new"}')
        + "."
        + b64(json.dumps(claims).encode())
        + ".",
        "old key's token naming the new kid": jwt.encode(
            claims, OLD_SECRET, "HS256", headers={"kid": "new"}
        ),
    }
    for name, token in refused.items():
        status, detail = await rest_status(server, token)
        assert status == 401 and detail.startswith("Invalid token"), name
        for url in (server.module_ws_url, server.ws_url):
            code, _ = await ws_outcome(url, token)  # type: ignore[misc]
            assert code == 4001, name
    unknown = jwt.encode(claims, NEW_SECRET, "HS256", headers={"kid": "gone"})
    assert await rest_status(server, unknown) == (401, "Invalid token: unknown key id 'gone'")


async def test_nbf_and_iat_in_the_future_are_refused_within_the_leeway(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    now = int(time.time())
    for claim in ("nbf", "iat"):
        early = jwt.encode({"sub": "7", claim: now + 60, "exp": now + 300}, server.secret, "HS256")
        assert await rest_status(server, early) == (
            401,
            "Invalid token: not valid yet (nbf or iat in the future)",
        )
        within_leeway = jwt.encode(
            {"sub": "7", claim: now + 2, "exp": now + 300}, server.secret, "HS256"
        )
        assert (await rest_status(server, within_leeway))[0] in (200, 201)


def test_short_or_missing_secrets_stop_the_start_in_one_line(tmp_path: Path) -> None:
    short = run_ratewire("serve", cwd=tmp_path, env={"RATEWIRE_JWT__SECRET": "YOUR_SUPER_SECRET"})
    assert short.returncode == 2
    assert short.stderr.strip().count("\n") == 0
    assert "jwt.secret is 17 bytes; at least 32 random bytes are needed" in short.stderr
    assert "--dev" in short.stderr
    missing = run_ratewire("serve", cwd=tmp_path, env={"RATEWIRE_JWT__SECRET": ""})
    assert missing.returncode == 2 and "no JWT key configured" in missing.stderr
    token = run_ratewire("token", "7", cwd=tmp_path, env={"RATEWIRE_JWT__SECRET": ""})
    assert token.returncode == 2 and "no JWT key configured" in token.stderr


async def test_dev_mode_generates_a_secret_once_and_ratewire_token_uses_it(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(args=("--dev",), env={"RATEWIRE_JWT__SECRET": ""})
    secret_file = server.workdir / ".ratewire-dev-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert len(secret_file.read_text().strip()) >= 32
    assert "dev mode: tokens are signed with a random secret generated now" in server.log_text()

    def cli_token() -> str:
        printed = run_ratewire("token", "7", cwd=server.workdir, env={"RATEWIRE_JWT__SECRET": ""})
        assert printed.returncode == 0, printed.stderr
        return printed.stdout.strip()

    token = await asyncio.to_thread(cli_token)
    assert (await rest_status(server, token))[0] in (200, 201)
    assert (await rest_status(server, server.token("7")))[0] == 401  # not the usual test key
    server.restart()  # the same secret again: tokens outlive restarts
    assert "kept in ./.ratewire-dev-secret" in server.log_text()
    assert (await rest_status(server, token))[0] in (200, 201)
