"""Dashboard sessions: a person signed in with an API key.

The browser holds a random session id; the store holds only its SHA-256 hash (a copy
of the table signs no one in), when it expires, and the key it was opened with, so
that revoking that key ends the session at once.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlmodel import Field, SQLModel, col, select

from orchestrator.store.models import ApiKey, as_utc
from orchestrator.store.repository import Store


class DashboardSession(SQLModel, table=True):
    __tablename__ = "dashboard_sessions"

    #: SHA-256 of the session id, hex.
    id_hash: str = Field(primary_key=True, max_length=64)
    key_id: str = Field(foreign_key="api_keys.id", index=True, max_length=32)
    created_at: datetime
    expires_at: datetime = Field(index=True)


def open_session(store: Store, id_hash: str, key_id: str, now: datetime, until: datetime) -> None:
    """Records a new session, and forgets the ones that have expired (nothing else
    removes them, and a sign-in is rare enough to pay for it)."""
    with store.session() as session:
        expired = col(DashboardSession.expires_at) <= now
        session.exec(delete(DashboardSession).where(expired))  # type: ignore[call-overload]
        session.add(
            DashboardSession(id_hash=id_hash, key_id=key_id, created_at=now, expires_at=until)
        )
        session.commit()


def session_key(store: Store, id_hash: str, now: datetime) -> ApiKey | None:
    """The live key of the live session ``id_hash`` names, or None: unknown, expired,
    or its key revoked since (that session is deleted then)."""
    with store.session() as session:
        found = session.exec(
            select(DashboardSession, ApiKey)
            .join(ApiKey, col(ApiKey.id) == col(DashboardSession.key_id))
            .where(col(DashboardSession.id_hash) == id_hash)
        ).first()
        if found is None:
            return None
        row, key = found
        if key.revoked_at is None and as_utc(row.expires_at) > now:
            return key
        session.delete(row)
        session.commit()
        return None


def close_session(store: Store, id_hash: str) -> bool:
    with store.session() as session:
        gone = session.exec(  # type: ignore[call-overload]
            delete(DashboardSession).where(col(DashboardSession.id_hash) == id_hash)
        )
        session.commit()
        return bool(gone.rowcount)
