"""Column types the tables share.

On SQLite, a table whose primary key is not its rowid keeps two B-trees (the rows by rowid,
and the key's index), and a rating write touches each of them. So the keys that are integers
are declared INTEGER there (SQLite makes such a key the rowid itself), and the small counter
tables keyed by text are WITHOUT ROWID (the rows live in the key's tree): six B-trees fewer
per rating write, out of 22 (migration 0003). The other databases' types are unchanged.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, SmallInteger

#: A BIGINT primary key that is the rowid on SQLite.
SQLITE_ROWID = BigInteger().with_variant(Integer(), "sqlite")
#: A SMALLINT primary key that is the rowid on SQLite.
SQLITE_ROWID_SMALL = SmallInteger().with_variant(Integer(), "sqlite")
