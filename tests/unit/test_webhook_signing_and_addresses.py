"""Webhook signatures (Standard Webhooks) and the addresses a webhook may connect to."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress

import httpx
import pytest

from ratewire.client.webhooks import WebhookVerificationError, sign, verify
from ratewire.config import WebhooksSettings
from ratewire.webhooks.addresses import RefusedUrl, check_url, refusal
from ratewire.webhooks.deliverer import guarded_client

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def test_a_signature_is_hmac_sha256_of_id_timestamp_and_body_under_the_decoded_secret() -> None:
    body = b'{"type":"rating_update","offset":1}'
    expected = hmac.new(
        b"0123456789abcdef0123456789abcdef", b"msg_1.1700000000." + body, hashlib.sha256
    ).digest()
    assert sign("msg_1", 1_700_000_000, body, SECRET) == "v1," + base64.b64encode(expected).decode()


def test_verify_accepts_the_signed_message_and_refuses_anything_else() -> None:
    body = b'{"type":"rating_update","offset":1}'
    headers = {
        "Webhook-Id": "msg_1",
        "Webhook-Timestamp": "1700000000",
        "Webhook-Signature": "v1,bogus " + sign("msg_1", 1_700_000_000, body, SECRET),
    }
    assert verify(headers, body, SECRET, now=1_700_000_100) == {
        "type": "rating_update",
        "offset": 1,
    }
    refused = [
        (headers, body + b" ", 1_700_000_100),  # body changed
        ({**headers, "Webhook-Id": "msg_2"}, body, 1_700_000_100),  # id changed
        (headers, body, 1_700_001_000),  # too old
        ({k: v for k, v in headers.items() if k != "Webhook-Signature"}, body, 1_700_000_100),
    ]
    for sent, content, now in refused:
        with pytest.raises(WebhookVerificationError):
            verify(sent, content, SECRET, now=now)
    other = "whsec_" + base64.b64encode(b"another secret of thirty-two by").decode()
    with pytest.raises(WebhookVerificationError):
        verify(headers, body, other, now=1_700_000_100)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.0.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("169.254.10.10", "link-local"),
        ("fe80::1", "link-local"),
        ("::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "private"),
        ("100.64.0.1", "not a public"),
        ("224.0.0.1", "not a unicast"),
    ],
)
def test_addresses_outside_the_public_internet_are_refused(address: str, why: str) -> None:
    reason = refusal(ipaddress.ip_address(address))
    assert reason is not None and why in reason


def test_public_addresses_are_allowed() -> None:
    for address in ("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "1.1.1.1"):
        assert refusal(ipaddress.ip_address(address)) is None


async def test_urls_are_checked_by_scheme_credentials_and_every_resolved_address() -> None:
    for url in ("ftp://example.com/", "https://user:pw@93.184.215.14/", "https:///nohost"):
        with pytest.raises(RefusedUrl):
            await check_url(url, allow_http=True, allow_private=False)
    with pytest.raises(RefusedUrl, match="https"):
        await check_url("http://93.184.215.14/", allow_http=False, allow_private=False)
    with pytest.raises(RefusedUrl, match="localhost resolves to"):
        await check_url("https://localhost/", allow_http=False, allow_private=False)
    await check_url("https://93.184.215.14/", allow_http=False, allow_private=False)
    await check_url("http://localhost:9/", allow_http=True, allow_private=True)


async def test_the_delivery_client_checks_the_address_it_connects_to() -> None:
    """A webhook registered while its name resolved elsewhere (DNS rebinding) still cannot
    reach a loopback server: the check is made again at connect time."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with guarded_client(WebhooksSettings()) as guarded:
            with pytest.raises(RefusedUrl, match="loopback"):
                await guarded.post(f"http://localhost:{port}/hook", content=b"{}")
        async with guarded_client(WebhooksSettings(allow_private_networks=True)) as allowed:
            assert (
                await allowed.post(f"http://localhost:{port}/hook", content=b"{}")
            ).status_code == 204
            redirect_free = allowed.follow_redirects
        assert redirect_free is False
    finally:
        server.close()


def test_the_guarded_client_is_an_httpx_client() -> None:
    assert isinstance(guarded_client(WebhooksSettings()), httpx.AsyncClient)
