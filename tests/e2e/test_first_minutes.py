"""The first ten minutes, as a newcomer meets them (issue 42): ``serve`` in a terminal says
where to go next and keeps library internals out of sight; a busy port and a bad
``--log-level`` are named in one line; ``tail`` says what it is doing on a terminal while
stdout stays the updates; empty lists say "none"; a closed pipe ends quietly; a dashboard's
read-only token may live as long as the operator allows; SSE and REST errors share their
problem types; ``ratewire mcp`` says its version."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from tests.support.cli import run_ratewire
from tests.support.server import SECRET, ServerProcess, free_port
from tests.support.terminal import Terminal
from websockets.sync.client import connect

from ratewire import __version__

pytestmark = pytest.mark.e2e


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without RATEWIRE_* settings, plus ``extra``."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("RATEWIRE_")},
        **extra,
    }


def test_serve_in_a_terminal_ends_its_start_with_where_to_go_next(tmp_path: Path) -> None:
    http_port, ws_port = free_port(), free_port()
    terminal = Terminal(
        [sys.executable, "-m", "ratewire", "serve", "--dev"],
        cwd=tmp_path,
        env=clean_env(
            RATEWIRE_SERVER__PORT=str(http_port), RATEWIRE_MODULES__WEBSOCKET__PORT=str(ws_port)
        ),
    )
    try:
        shown = terminal.read_until("Ctrl-C stops it.")
    finally:
        terminal.stop()
    banner = shown[shown.index(f"ratewire {__version__} is ready (dev mode)") :]
    for line in (
        f"REST       http://127.0.0.1:{http_port}",
        f"ws://127.0.0.1:{ws_port}/  and  ws://127.0.0.1:{http_port}/ws",
        f"API docs   http://127.0.0.1:{http_port}/docs",
        f"Dashboard  http://127.0.0.1:{http_port}/dashboard",
        "Storage    sqlite: sqlite:///./ratewire.db",
        "Next       ratewire token 7",
    ):
        assert line in banner, banner
    # A fresh database was created, yet no library internals reached the terminal.
    assert "storage: created the schema" in shown
    for internal in ("alembic", "setup plugin", "Context impl", "Started server process"):
        assert internal not in shown, shown


def test_serve_names_a_busy_port_and_overrides_ports_from_the_command_line(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        for option, other, setting in (
            ("--port", "--ws-port", "server.port"),
            ("--ws-port", "--port", "modules.websocket.port"),
        ):
            started = run_ratewire(
                "serve", "--dev", "--host", "127.0.0.1", option, str(busy), other,
                str(free_port()), cwd=tmp_path,
            )  # fmt: skip
            assert started.returncode == 1
            last = started.stderr.strip().splitlines()[-1]
            assert last == (
                f"ratewire: cannot start: {setting} {busy} ({option}) on 127.0.0.1: Address "
                "already in use; another process listens there; stop it or choose another port"
            ), started.stderr
            assert "Traceback" not in started.stderr
    assert "--ws-port" in run_ratewire("serve", "--help", cwd=tmp_path).stdout


def test_serve_names_an_address_that_is_not_this_machines(tmp_path: Path) -> None:
    started = run_ratewire("serve", "--dev", "--host", "192.0.2.1", cwd=tmp_path)
    assert started.returncode == 1
    last = started.stderr.strip().splitlines()[-1]
    assert last.startswith("ratewire: cannot start: server.port ")
    assert "(--port) on 192.0.2.1" in last
    assert "'192.0.2.1' is not an address of this machine (server.host, --host)" in last


def test_a_bad_log_level_is_one_line_listing_the_choices(tmp_path: Path) -> None:
    started = run_ratewire("serve", "--log-level", "LOUD", cwd=tmp_path)
    assert started.returncode == 2 and "Traceback" not in started.stderr
    assert "'LOUD' is not one of 'debug', 'info', 'warning', 'error', 'critical'" in (
        started.stderr
    )


def tail_env(server: ServerProcess) -> dict[str, str]:
    return clean_env(
        RATEWIRE_JWT__SECRET=SECRET,
        RATEWIRE_MODULES__WEBSOCKET__PORT=str(server.ws_port),
        RATEWIRE_SERVER__PORT=str(server.http_port),
    )


def rate(server: ServerProcess, game: str, user: str, score: int) -> None:
    answer = httpx.put(
        f"{server.base_url}/games/{game}/ratings/{user}",
        json={"score": score},
        headers={"Authorization": f"Bearer {server.token(user)}"},
        timeout=10,
    )
    assert answer.status_code in (200, 201), answer.text


def test_tail_tells_a_person_what_it_does_and_keeps_stdout_for_updates(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_factory()
    rate(server, "t1", "a", 4)
    terminal = Terminal(
        [sys.executable, "-m", "ratewire", "tail", "rating.game.t1"],
        cwd=tmp_path,
        env=tail_env(server),
    )
    try:
        shown = terminal.read_until("following rating.game.t1 from offset 1")
        assert f"ratewire tail: connecting to {server.module_ws_url}" in shown
        assert f"connected to {server.module_ws_url}" in shown
        rate(server, "t1", "b", 2)
        assert terminal.process.stdout is not None
        line = terminal.process.stdout.readline().decode()
        assert line == "rating.game.t1 #2 created game=t1 user=b score=2\n"
        server.restart()
        terminal.read_until("connection lost (close code 1001); reconnecting and resuming")
        terminal.read_until("resumed")
    finally:
        terminal.stop()

    dead = f"ws://127.0.0.1:{free_port()}/"
    terminal = Terminal(
        [sys.executable, "-m", "ratewire", "tail", "rating.global", "--url", dead],
        cwd=tmp_path,
        env=tail_env(server),
    )
    try:
        terminal.read_until(f"ratewire tail: cannot reach {dead}")
        terminal.read_until("retrying")
    finally:
        terminal.stop()


def test_tail_in_a_script_prints_only_updates(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_factory()
    rate(server, "t2", "a", 5)
    tail = subprocess.Popen(
        [sys.executable, "-m", "ratewire", "tail", "rating.game.t2", "--since", "0"],
        cwd=tmp_path,
        env=tail_env(server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tail.stdout is not None
        assert tail.stdout.readline() == "rating.game.t2 #1 created game=t2 user=a score=5\n"
    finally:
        tail.terminate()
        _, errors = tail.communicate(timeout=30)
    assert errors == ""


def test_empty_lists_say_none_and_a_closed_pipe_ends_quietly(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_factory()
    env = {"RATEWIRE_JWT__SECRET": SECRET}
    for command, says in (
        (("revoke", "--list"), "ratewire revoke --list: none in force"),
        (("webhook", "list"), "ratewire webhook list: none registered"),
    ):
        listed = run_ratewire(*command, "--url", server.base_url, cwd=tmp_path, env=env)
        assert listed.returncode == 0, listed.stderr
        assert (listed.stdout, listed.stderr.strip()) == ("", says)

    rate(server, "pipe", "a", 3)
    store = {"RATEWIRE_STORAGE__URL": f"sqlite:///{server.workdir / 'ratewire.db'}"}
    for command in (
        ("audit", "export"),
        ("tail", "rating.game.pipe", "--since", "0", "--url", server.module_ws_url),
    ):
        # `ratewire ... | head -0`: the reader has gone before the first line is written.
        reader, writer = os.pipe()
        os.close(reader)
        try:
            ended = subprocess.run(
                [sys.executable, "-m", "ratewire", *command],
                cwd=tmp_path,
                env=clean_env(RATEWIRE_JWT__SECRET=SECRET, **store),
                stdout=writer,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
            )
        finally:
            os.close(writer)
        assert ended.returncode != 0, command
        assert "Broken pipe" not in ended.stderr and "Traceback" not in ended.stderr, (
            command,
            ended.stderr,
        )


def test_a_dashboard_token_may_live_as_long_as_the_operator_allows(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    day = {"RATEWIRE_JWT__MAX_READ_ONLY_TTL_SECONDS": "86400", "RATEWIRE_JWT__SECRET": SECRET}
    server = server_factory(env=day)
    wall = run_ratewire(
        "token", "dashboard", "--scope", "ratings:read", "--ttl", "86400", cwd=tmp_path, env=day
    )
    assert wall.returncode == 0, wall.stderr
    token = wall.stdout.strip()
    with connect(f"{server.module_ws_url}?token={token}") as ws:
        assert json.loads(ws.recv(10))["type"] == "connection_success"
        ws.send(json.dumps({"action": "subscribe", "topic": "rating.global"}))
        assert json.loads(ws.recv(10))["type"] == "subscribed"
    answer = httpx.get(
        f"{server.base_url}/topics/rating.global/events",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 200
    # A token that may write stays bounded by jwt.max_ttl_seconds, and says where the
    # longer lifetime is.
    writer = run_ratewire("token", "dashboard", "--ttl", "86400", cwd=tmp_path, env=day)
    assert writer.returncode == 2
    assert "jwt.max_ttl_seconds is 900" in writer.stderr
    assert "--scope ratings:read" in writer.stderr
    # Without the setting a read-only token is bounded like any other.
    default = run_ratewire(
        "token", "dashboard", "--scope", "ratings:read", "--ttl", "3600", cwd=tmp_path
    )
    assert default.returncode == 2 and "is 900" in default.stderr


def test_sse_and_rest_refusals_share_their_problem_types(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    stream = httpx.get(f"{server.base_url}/stream", params={"topic": "rating.global"})
    rest = httpx.get(f"{server.base_url}/topics/rating.global/events")
    assert stream.status_code == rest.status_code == 401
    for answer in (stream, rest):
        assert answer.headers["content-type"].startswith("application/problem+json")
    assert stream.json()["type"] == rest.json()["type"] == "urn:ratewire:problem:unauthorized"


async def test_mcp_reports_its_version(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory()
    parameters = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m", "ratewire", "mcp", "--url", server.module_ws_url,
            "--rest-url", server.base_url, "--token", server.token("agent"),
        ],
        env={**os.environ, "RATEWIRE_JWT__SECRET": SECRET},
    )  # fmt: skip
    async with stdio_client(parameters) as (read, write), ClientSession(read, write) as session:
        started = await session.initialize()
    assert (started.server_info.name, started.server_info.version) == ("ratewire", __version__)


def test_mcp_over_http_says_where_it_listens(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_factory()
    port = free_port()
    terminal = Terminal(
        [
            sys.executable, "-m", "ratewire", "mcp", "--http", str(port),
            "--url", server.module_ws_url, "--rest-url", server.base_url,
        ],
        cwd=tmp_path,
        env=clean_env(RATEWIRE_JWT__SECRET=SECRET),
    )  # fmt: skip
    try:
        shown = terminal.read_until(f"http://127.0.0.1:{port}/mcp")
    finally:
        terminal.stop()
    assert f"ratewire mcp {__version__}" in shown


def test_a_local_webhook_refusal_names_the_settings_a_trial_needs(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """The command examples/webhook_receiver.py gives, against a server without and then with
    the first of the two settings it names."""
    env = {"RATEWIRE_JWT__SECRET": SECRET}
    for settings, named in (
        ({}, "webhooks.allow_insecure_http"),
        ({"RATEWIRE_WEBHOOKS__ALLOW_INSECURE_HTTP": "true"}, "webhooks.allow_private_networks"),
    ):
        server = server_factory(env=settings)
        added = run_ratewire(
            "webhook", "add", "http://127.0.0.1:9000/", "--topic", "rating.global",
            "--url", server.base_url, cwd=tmp_path, env=env,
        )  # fmt: skip
        assert added.returncode == 1 and named in added.stderr, added.stderr
    docstring = (Path(__file__).parents[2] / "examples" / "webhook_receiver.py").read_text()
    assert "ratewire webhook add http://127.0.0.1:9000/ --topic rating.global" in docstring
    assert "RATEWIRE_WEBHOOKS__ALLOW_INSECURE_HTTP=true" in docstring
    assert "RATEWIRE_WEBHOOKS__ALLOW_PRIVATE_NETWORKS=true" in docstring
