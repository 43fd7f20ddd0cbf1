"""The store's schema history, as Alembic revisions (``versions/``).

`Store` upgrades to the newest revision when it opens a store, so nobody runs Alembic by
hand. A change to ``models.py`` needs a revision here too: write it by hand with ``op.*``
(batch mode, so it also works on SQLite), chain it with ``down_revision`` after the
newest one, and ``tests/test_migrations.py`` checks that the migrated schema equals the
models on SQLite and PostgreSQL.
"""
