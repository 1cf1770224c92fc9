"""Settings: defaults, the guide's file layout, environment overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from ratewire.config import ConfigError, load_settings
from tests.support.cli import run_ratewire

EXAMPLES = Path(__file__).parents[2] / "examples"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_when_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert (settings.server.port, settings.modules.websocket.port) == (8080, 8081)
    assert settings.modules.websocket.enabled is True
    assert settings.storage.backend == "sqlite"
    assert settings.storage.resolved_url() == "sqlite:///./ratewire.db"
    assert settings.jwt.algorithm == "HS256" and settings.jwt.expiry_seconds == 900
    assert settings.topics.rating == [
        "rating.global",
        "rating.game.{game_id}",
        "rating.user.{user_id}",
    ]


def test_the_guide_layout_is_read(tmp_path: Path) -> None:
    config = write(
        tmp_path / "config.yml",
        "server: {host: 127.0.0.1, port: 9000}\n"
        "modules:\n  websocket: {enabled: false, port: 9001}\n"
        "storage: {backend: postgresql, url: 'postgresql://db/x'}\n"
        "limits: {send_buffer_bytes: 4096}\n",
    )
    auth = write(
        tmp_path / "auth.yml", "jwt: {secret: s3cret, algorithm: HS512, expiry_seconds: 60}\n"
    )
    settings = load_settings(config, auth, environ={})
    assert settings.server.port == 9000 and settings.modules.websocket.enabled is False
    assert settings.storage.resolved_url() == "postgresql://db/x"
    assert settings.limits.send_buffer_bytes == 4096
    assert (settings.jwt.secret, settings.jwt.algorithm, settings.jwt.expiry_seconds) == (
        "s3cret",
        "HS512",
        60,
    )


def test_environment_overrides_files(tmp_path: Path) -> None:
    config = write(tmp_path / "config.yml", "server: {port: 9000}\n")
    environ = {
        "RATEWIRE_SERVER__PORT": "9100",
        "RATEWIRE_MODULES__WEBSOCKET__PORT": "9101",
        "RATEWIRE_JWT__SECRET": "from-env",
        "RATEWIRE_STORAGE__BACKEND": "memory",
        "RATEWIRE_LIMITS__WS_MESSAGES_PER_CLIENT_PER_SECOND": "2.5",
        "RATEWIRE_UNRELATED": "ignored",
        "OTHER__THING": "ignored",
    }
    settings = load_settings(config, None, environ=environ)
    assert settings.server.port == 9100 and settings.modules.websocket.port == 9101
    assert settings.jwt.secret == "from-env" and settings.storage.backend == "memory"
    assert settings.limits.ws_messages_per_client_per_second == 2.5


def test_the_examples_are_valid_and_match_the_defaults() -> None:
    from ratewire.config import Settings

    settings = load_settings(EXAMPLES / "config.yml", EXAMPLES / "auth.yml", environ={})
    defaults = Settings()
    assert settings.storage.resolved_url() == defaults.storage.resolved_url()
    documented = settings.model_copy(update={"storage": defaults.storage})
    assert documented == defaults, "the examples document the defaults"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            "server: {port: 99999}\n",
            "config.yml: server.port: Input should be less than or equal to 65535 (got 99999)",
        ),
        ("server: {port: eighty}\n", "config.yml: server.port: Input should be a valid integer"),
        ("server: {prot: 80}\n", "config.yml: server.prot: unknown key"),
        ("storage: {backend: oracle}\n", "config.yml: storage.backend: Input should be 'memory'"),
        (
            "topics: {rating: ['rating.weird']}\n",
            "config.yml: topics.rating: Value error, unknown topic template 'rating.weird'",
        ),
        (
            "limits: {send_buffer_bytes: 10}\n",
            "config.yml: limits.send_buffer_bytes: Input should be greater than or equal to 1024",
        ),
        ("server: [1, 2]\n", "config.yml: server: Input should be a valid dictionary"),
        ("server: {port: 80\n", "config.yml: not valid YAML (line 2)"),
        ("- just a list\n", "config.yml: must be a mapping of sections"),
    ],
)
def test_bad_config_is_one_line_naming_file_key_and_problem(
    tmp_path: Path, config: str, expected: str
) -> None:
    path = write(tmp_path / "config.yml", config)
    with pytest.raises(ConfigError) as raised:
        load_settings(path, None, environ={})
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(str(path.parent)) and expected in message, message


def test_bad_auth_and_env_values_name_their_source(tmp_path: Path) -> None:
    auth = write(tmp_path / "auth.yml", "jwt: {algorithm: RS256}\n")
    with pytest.raises(ConfigError, match=r"auth\.yml: jwt\.algorithm: Input should be 'HS256'"):
        load_settings(None, auth, environ={})
    with pytest.raises(ConfigError, match=r"environment RATEWIRE_SERVER__PORT: server\.port"):
        load_settings(None, None, environ={"RATEWIRE_SERVER__PORT": "-1"})
    with pytest.raises(ConfigError, match=r"missing\.yml: file not found"):
        load_settings(tmp_path / "missing.yml", None, environ={})
    with pytest.raises(
        ConfigError,
        match=r"environment RATEWIRE_STORAGE__SQLITE_SYNCHRONOUS: storage\.sqlite_synchronous",
    ):
        load_settings(None, None, environ={"RATEWIRE_STORAGE__SQLITE_SYNCHRONOUS": "off"})
    relaxed = {"RATEWIRE_STORAGE__SQLITE_SYNCHRONOUS": "normal"}
    assert load_settings(None, None, environ=relaxed).storage.sqlite_synchronous == "normal"


def test_serve_with_a_bad_config_exits_with_that_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yml", "limits: {max_message_bytes: many}\n")
    result = run_ratewire("serve", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("ratewire: config error: ")
    assert f"{path}: limits.max_message_bytes: Input should be a valid integer" in lines[0]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            (),
            {
                "RATEWIRE_STORAGE__BACKEND": "redis",
                "RATEWIRE_STORAGE__URL": "redis://127.0.0.1:1/0",
            },
            "redis (redis://127.0.0.1:1/0)",
        ),
        (
            ("--role", "stream"),
            {},
            "server.role: 'stream' needs broker.backend: redis or nats",
        ),
        (
            ("--role", "api"),
            {},
            "server.role: 'api' needs broker.backend: redis or nats",
        ),
        (
            (),
            {"RATEWIRE_STORAGE__BACKEND": "none"},
            "storage.backend: 'none' is only for server.role: 'stream'",
        ),
        (
            ("--workers", "2"),
            {"RATEWIRE_STORAGE__BACKEND": "memory"},
            "server.workers > 1 needs a shared storage.backend",
        ),
        (
            (),
            {"RATEWIRE_BROKER__BACKEND": "redis", "RATEWIRE_BROKER__URL": "redis://127.0.0.1:1/0"},
            "broker unreachable at redis://127.0.0.1:1/0",
        ),
        (
            (),
            {"RATEWIRE_BROKER__BACKEND": "nats", "RATEWIRE_BROKER__URL": "nats://u:pw@127.0.0.1:1"},
            "broker unreachable at nats://REDACTED@127.0.0.1:1: nats: no servers available",
        ),
        (
            (),
            {"RATEWIRE_BROKER__BACKEND": "nats", "RATEWIRE_BROKER__PREFIX": "team.a"},
            "broker.prefix 'team.a': NATS names may not contain '.'",
        ),
        (
            (),
            {"RATEWIRE_BROKER__BACKEND": "nats", "RATEWIRE_BROKER__TLS_KEY_FILE": "key.pem"},
            "broker.tls_key_file needs broker.tls_cert_file",
        ),
    ],
)
def test_deployments_that_cannot_work_stop_the_start_with_one_line(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    result = run_ratewire("serve", *args, cwd=tmp_path, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"ratewire: cannot start: {expected}" in result.stderr


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every key of ``model``, dotted; a section's keys below it (``jwt.keys`` is a list)."""
    found: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found |= _keys(annotation, f"{prefix}{name}.")
        else:
            found.add(f"{prefix}{name}")
    return found


def _written(tree: dict[str, Any], prefix: str = "") -> set[str]:
    found: set[str] = set()
    for name, value in tree.items():
        if isinstance(value, dict):
            found |= _written(value, f"{prefix}{name}.")
        else:
            found.add(f"{prefix}{name}")
    return found


def test_the_examples_write_out_every_key_of_the_settings() -> None:
    """examples/config.yml and auth.yml say they hold every key: a key added to the settings
    model without them fails here, as does one they keep after it is gone."""
    import yaml

    from ratewire.config import Settings

    written = _written(yaml.safe_load((EXAMPLES / "config.yml").read_text()))
    auth = (EXAMPLES / "auth.yml").read_text()
    written |= _written(yaml.safe_load(auth))
    # The one key shown commented out: a placeholder secret would be a weak one.
    if "\n  # secret: " in auth:
        written.add("jwt.secret")
    expected = _keys(Settings)
    assert sorted(expected - written) == [], "keys missing from examples/config.yml or auth.yml"
    assert sorted(written - expected) == [], "keys the settings no longer have"
