"""Moving a ratewire database: ``ratewire copy`` from one backend to another, and ``export``
/ ``import`` through a portable file (docs/operations.md, Moving to PostgreSQL).

Every backend is read and written as the same rows: the SQL schema's tables
(:mod:`ratewire.transfer.tables`), whatever the backend keeps them as. A copy keeps every
offset, the epoch and the audit chain as they are, so subscribers resume with ``since`` and
the chain verifies on the target.
"""
