"""What the ``ratewire`` commands share: the --config/--auth options, settings read with one
clear error line, and the token service that signs their tokens."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from ratewire.config import ConfigError, Settings, load_settings

_F = TypeVar("_F", bound=Callable[..., Any])


def _file_option(name: str, default: str) -> Callable[[_F], _F]:
    """``--NAME``: an optional YAML file, given to the command as ``NAME_path``."""
    return click.option(
        f"--{name}",
        f"{name}_path",
        type=click.Path(path_type=Path),
        default=None,
        help=f"{default} (default: ./{default} if present)",
    )


config_option = _file_option("config", "config.yml")
auth_option = _file_option("auth", "auth.yml")


def exit_config_error(exc: ConfigError) -> NoReturn:
    """One line on stderr, and exit status 2 (what every command does on a bad setting)."""
    click.echo(f"ratewire: config error: {exc}", err=True)
    sys.exit(2)


def settings_from(config_path: Path | None, auth_path: Path | None) -> Settings:
    try:
        return load_settings(config_path, auth_path)
    except ConfigError as exc:
        exit_config_error(exc)


def with_dev_secret(settings: Settings, *, create: bool) -> tuple[Settings, str | None]:
    """``settings`` signing with the development secret when no key is configured (created
    if ``create``), and a line saying so (None when a configured key is used)."""
    from ratewire.security.dev_secret import DEV_SECRET_FILE, dev_secret, read_dev_secret

    if settings.jwt.secret is not None or settings.jwt.keys:
        return settings, None
    if create:
        secret, created = dev_secret()
        kept = "generated now and kept" if created else "kept"
    else:
        found = read_dev_secret()
        if found is None:
            return settings, None
        secret, kept = found, "kept"
    jwt_settings = settings.jwt.model_copy(update={"secret": secret})
    note = (
        f"dev mode: tokens are signed with a random secret {kept} in ./{DEV_SECRET_FILE} "
        "(`ratewire token SUB` in this directory uses it); configure jwt.secret for anything else"
    )
    return settings.model_copy(update={"jwt": jwt_settings}), note


def token_service(settings: Settings) -> Any:
    """The TokenService of ``ratewire token``/``tail``/``revoke`` (the dev secret if no key is
    configured); exits with one line when no key can be used."""
    from ratewire.security.tokens import TokenService

    settings, _ = with_dev_secret(settings, create=False)
    try:
        # dev: these commands only sign for a server that already accepted the key.
        return TokenService(settings.jwt, dev=True)
    except ConfigError as exc:
        exit_config_error(exc)


def run_on_store(settings: Settings, work: Any, command: str, *, start: bool = True) -> Any:
    """``await work(store)`` on the configured store (started first unless ``start`` is
    false); exits 1 with one line naming ``command`` if the store cannot be used."""
    import asyncio

    from ratewire.storage import StorageError, open_store
    from ratewire.storage.factory import UnsupportedBackend

    async def run() -> Any:
        store = open_store(settings.storage)
        try:
            if start:
                await store.start()
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except BrokenPipeError:
        raise  # stdout was closed (``| head``): click ends quietly
    except (StorageError, UnsupportedBackend, OSError) as exc:
        click.echo(f"ratewire {command}: {exc}", err=True)
        sys.exit(1)
