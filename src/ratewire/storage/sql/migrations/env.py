"""Alembic's environment for ratewire's SQL stores.

ratewire runs migrations itself (``ratewire db upgrade``, and ``serve`` on an older schema):
it passes its own connection, already in a transaction and holding the migration lock, as
``config.attributes["connection"]`` (see ratewire.storage.sql.migrate). For writing a new
migration, ``alembic -x url=sqlite:///dev.db ...`` works too (docs/operations.md).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from ratewire.storage.sql.migrate import VERSION_TABLE
from ratewire.storage.sql.schema import metadata

connection = context.config.attributes.get("connection")
if connection is not None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite alters a table by copying it
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    url = context.get_x_argument(as_dictionary=True).get("url", "sqlite:///ratewire.db")
    with create_engine(url).connect() as own:
        context.configure(
            connection=own,
            target_metadata=metadata,
            version_table=VERSION_TABLE,
            render_as_batch=True,
        )
        with context.begin_transaction():
            context.run_migrations()
