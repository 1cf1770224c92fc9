"""The HTTP API: routes, problem+json errors and request admission."""

from ratewire.api.app import create_app

__all__ = ["create_app"]
