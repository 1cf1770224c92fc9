"""What the Redis store makes of its URL and of the server's persistence settings."""

from __future__ import annotations

import pytest

from ratewire.storage.redis.store import persistence_warning, split_url


@pytest.mark.parametrize(
    ("config", "warned"),
    [
        ({"appendonly": "yes", "appendfsync": "always", "save": ""}, None),
        ({"appendonly": "yes", "appendfsync": "everysec", "save": ""}, "up to a second"),
        ({"appendonly": "yes", "appendfsync": "no", "save": ""}, "had not flushed"),
        ({"appendonly": "no", "appendfsync": "always", "save": "3600 1"}, "last RDB snapshot"),
        ({"appendonly": "no", "appendfsync": "everysec", "save": ""}, "loses every rating"),
    ],
)
def test_persistence_settings_that_cannot_keep_acknowledged_writes_are_named(
    config: dict[str, str], warned: str | None
) -> None:
    warning = persistence_warning(config)
    if warned is None:
        assert warning is None
    else:
        assert warning is not None and warned in warning


def test_the_prefix_is_taken_out_of_the_url_and_the_rest_kept() -> None:
    assert split_url("redis://:pw@host:6380/2?prefix=shop&ssl_cert_reqs=none") == (
        "redis://:pw@host:6380/2?ssl_cert_reqs=none",
        "shop",
    )
    assert split_url("rediss://host/0") == ("rediss://host/0", "ratewire")
