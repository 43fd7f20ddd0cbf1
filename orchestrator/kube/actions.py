"""The executor's ActionLog kept in the store (the ``cluster_actions`` table): deletes
of Jobs survive a restart and a cluster being away."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import col, delete, select

from orchestrator.store import Store
from orchestrator.store.models import ClusterAction

DELETE = "delete"


def _id(handle: str) -> str:
    return f"{DELETE}:{handle}"


class StoreActionLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    def pending_deletes(self) -> list[str]:
        with self.store.session() as session:
            rows = session.exec(
                select(ClusterAction.handle)
                .where(col(ClusterAction.kind) == DELETE)
                .order_by(col(ClusterAction.created_at), col(ClusterAction.id))
            ).all()
            return list(rows)

    def add_deletes(self, handles: Sequence[str]) -> None:
        with self.store.session() as session:
            for handle in dict.fromkeys(handles):
                # A delete decided twice (a replayed tick) stays one row, in its place.
                if session.get(ClusterAction, _id(handle)) is None:
                    session.add(
                        ClusterAction(
                            id=_id(handle),
                            kind=DELETE,
                            cluster=handle.split("/", 1)[0],
                            handle=handle,
                        )
                    )
            session.commit()
        # Durable before the delete is sent, also inside an engine batch.
        self.store.checkpoint()

    def done_delete(self, handle: str) -> None:
        with self.store.session() as session:
            session.exec(delete(ClusterAction).where(col(ClusterAction.id) == _id(handle)))  # type: ignore[call-overload]
            session.commit()
