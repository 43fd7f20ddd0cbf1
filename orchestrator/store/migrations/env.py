"""Alembic's entry point: `Store` hands it an open connection in ``config.attributes``.

Without one (the ``alembic`` command line, given ``-x url=...`` or ``sqlalchemy.url``)
it connects by itself.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel

import orchestrator.store.models  # noqa: F401  (fills SQLModel.metadata for autogenerate)

config = context.config


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("give the store's URL: alembic -x url=sqlite:///path/camflow.db ...")
    return url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        # SQLite alters most things only by copying the table: batch mode does that.
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=SQLModel.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (given := config.attributes.get("connection")) is not None:
    _run(given)
else:
    engine = create_engine(_url(), poolclass=NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()
