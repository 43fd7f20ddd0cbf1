"""Endpoints and deliveries in the store: registering and removing endpoints, listing
and replaying deliveries, and the worker's claims on what is due.

Claims are what let every replica run a worker: a delivery is taken by one conditional
UPDATE (PostgreSQL also skips rows another replica's claim has locked), held until
``claimed_until``, and its outcome is recorded only under the same claim. A replica
that dies mid-send leaves its claim to expire, and the delivery is sent again: at
least once, never by two replicas at the same time while a claim holds.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, update
from sqlmodel import col, select

from orchestrator.store import Clip, Run, Store
from orchestrator.store.models import as_utc
from orchestrator.store.webhooks import DeliveryState, WebhookDelivery, WebhookEndpoint
from orchestrator.webhooks.signing import new_secret

#: Each finished run writes a delivery per endpoint of its tenant: a bound on that.
MAX_ENDPOINTS_PER_TENANT = 20


@dataclass(frozen=True)
class Claimed:
    """A delivery this worker holds, with what it takes to send it."""

    delivery: WebhookDelivery
    endpoint: WebhookEndpoint
    run: Run
    clip: Clip


class EndpointLimit(ValueError):
    """A tenant has as many endpoints as it may."""


def _claimable(now: datetime) -> Any:
    return (
        (col(WebhookDelivery.state) == DeliveryState.PENDING)
        & (col(WebhookDelivery.next_attempt_at) <= now)
        & or_(
            col(WebhookDelivery.claimed_until).is_(None),
            col(WebhookDelivery.claimed_until) < now,
        )
    )


class Outbox:
    def __init__(self, store: Store) -> None:
        self.store = store

    # --- endpoints ----------------------------------------------------------------------

    def add_endpoint(
        self, tenant: str, url: str, events: Sequence[str], description: str, now: datetime
    ) -> WebhookEndpoint:
        """Records an endpoint with a new secret (the row holds it: show it once)."""
        with self.store.session() as session:
            count = session.exec(
                select(func.count())
                .select_from(WebhookEndpoint)
                .where(col(WebhookEndpoint.tenant) == tenant)
            ).one()
            if int(count) >= MAX_ENDPOINTS_PER_TENANT:
                raise EndpointLimit(
                    f"tenant {tenant!r} has {count} webhook endpoints, the most it may have: "
                    "remove one first"
                )
            row = WebhookEndpoint(
                id=f"ep_{secrets.token_hex(8)}",
                tenant=tenant,
                url=url,
                events=sorted(set(events)),
                secret=new_secret(),
                description=description,
                created_at=now,
            )
            session.add(row)
            session.commit()
            return row

    def endpoints(self, tenant: str | None = None) -> list[WebhookEndpoint]:
        with self.store.session() as session:
            query = select(WebhookEndpoint)
            if tenant is not None:
                query = query.where(col(WebhookEndpoint.tenant) == tenant)
            order = (col(WebhookEndpoint.created_at), col(WebhookEndpoint.id))
            return list(session.exec(query.order_by(*order)).all())

    def remove_endpoint(self, endpoint_id: str, tenant: str | None = None) -> bool:
        """Deletes the endpoint (``tenant``'s only, unless None) and its deliveries, so
        nothing more is sent to it; False if there is none."""
        with self.store.session() as session:
            row = session.get(WebhookEndpoint, endpoint_id)
            if row is None or (tenant is not None and row.tenant != tenant):
                return False
            session.exec(  # type: ignore[call-overload]
                delete(WebhookDelivery).where(col(WebhookDelivery.endpoint_id) == endpoint_id)
            )
            session.delete(row)
            session.commit()
            return True

    # --- deliveries ---------------------------------------------------------------------

    def deliveries(
        self,
        tenant: str | None = None,
        state: DeliveryState | None = None,
        endpoint_id: str | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int = 50,
    ) -> list[WebhookDelivery]:
        """Newest first, from after the ``after`` cursor (created_at, id)."""
        with self.store.session() as session:
            query = select(WebhookDelivery)
            if tenant is not None:
                query = query.where(col(WebhookDelivery.tenant) == tenant)
            if state is not None:
                query = query.where(col(WebhookDelivery.state) == state)
            if endpoint_id is not None:
                query = query.where(col(WebhookDelivery.endpoint_id) == endpoint_id)
            if after is not None:
                at, ident = after
                created = col(WebhookDelivery.created_at)
                query = query.where(
                    or_(created < at, (created == at) & (col(WebhookDelivery.id) < ident))
                )
            order = (col(WebhookDelivery.created_at).desc(), col(WebhookDelivery.id).desc())
            return list(session.exec(query.order_by(*order).limit(limit)).all())

    def replay(
        self, delivery_id: str, now: datetime, tenant: str | None = None
    ) -> WebhookDelivery | None:
        """Sends a delivery again, whatever its state, with the same id (a receiver
        that has it already can tell), at once and with a new retry window (and its
        attempts counted afresh, so the backoff starts small again). A send under way
        keeps its claim: this one waits for it to end (clearing it would let another
        replica send the same delivery at the same time)."""
        with self.store.session() as session:
            row = session.get(WebhookDelivery, delivery_id)
            if row is None or (tenant is not None and row.tenant != tenant):
                return None
            row.state = DeliveryState.PENDING
            row.window_started_at = now
            claimed = as_utc(row.claimed_until) if row.claimed_until else None
            row.next_attempt_at = max(now, claimed) if claimed else now
            # The backoff starts over with the window (attempts count within it).
            row.attempts = 0
            session.add(row)
            session.commit()
            return row

    def prune(self, before: datetime, limit: int = 1000) -> int:
        """Deletes up to ``limit`` deliveries delivered before ``before`` (a range of the
        delivered index); returns how many. Pending and failed ones are never pruned."""
        old = (
            select(WebhookDelivery.id)
            .where(
                col(WebhookDelivery.state) == DeliveryState.DELIVERED,
                col(WebhookDelivery.delivered_at) < before,
            )
            .limit(limit)
        )
        with self.store.session() as session:
            done = session.exec(
                delete(WebhookDelivery)
                .where(col(WebhookDelivery.id).in_(old.scalar_subquery()))
                .execution_options(synchronize_session=False)
            )
            session.commit()
            return int(done.rowcount or 0)

    def counts(self) -> dict[DeliveryState, int]:
        """Deliveries pending and failed: a range of the due index, never the history
        of delivered ones."""
        wanted = (DeliveryState.PENDING, DeliveryState.FAILED)
        with self.store.session() as session:
            rows = session.exec(
                select(WebhookDelivery.state, func.count())
                .where(col(WebhookDelivery.state).in_(wanted))
                .group_by(WebhookDelivery.state)
            ).all()
        found = {DeliveryState(state): int(n) for state, n in rows}
        return {state: found.get(state, 0) for state in wanted}

    # --- the worker ---------------------------------------------------------------------

    def claim(self, now: datetime, until: datetime, limit: int) -> tuple[str, list[Claimed]]:
        """Takes up to ``limit`` due deliveries, oldest first, until ``until``: the
        claim's token and what it holds. Nothing another live claim holds is taken."""
        token = secrets.token_hex(8)
        due = (
            select(WebhookDelivery.id)
            .where(_claimable(now))
            .order_by(col(WebhookDelivery.next_attempt_at))
            .limit(limit)
            # PostgreSQL: rows another replica is claiming are skipped, not waited for.
            # (SQLite runs the whole statement under its one write lock.)
            .with_for_update(skip_locked=True)
        )
        with self.store.session() as session:
            # One statement, so that choosing and taking are one atomic step; the
            # conditions again outside, for a row another claim took meanwhile.
            taken = session.exec(
                update(WebhookDelivery)
                .where(col(WebhookDelivery.id).in_(due.scalar_subquery()), _claimable(now))
                .values(claimed_until=until, claim=token)
                .returning(col(WebhookDelivery.id))
                .execution_options(synchronize_session=False)
            )
            claimed = [row[0] for row in taken.all()]
            session.commit()
            if not claimed:
                return token, []
            rows = session.exec(
                select(WebhookDelivery, WebhookEndpoint, Run, Clip)
                .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id))
                .join(Run, col(Run.id) == col(WebhookDelivery.run_id))
                .join(Clip, col(Clip.id) == col(Run.clip_id))
                .where(col(WebhookDelivery.id).in_(claimed))
                .order_by(col(WebhookDelivery.next_attempt_at))
            ).all()
            return token, [Claimed(*row) for row in rows]

    def record(self, delivery_id: str, token: str, **values: Any) -> bool:
        """Records an attempt's outcome and lets the claim go, only while ``token``
        still holds it (a replay in between wins); False otherwise."""
        with self.store.session() as session:
            changed = session.exec(
                update(WebhookDelivery)
                .where(col(WebhookDelivery.id) == delivery_id, col(WebhookDelivery.claim) == token)
                .values(**values, claimed_until=None, claim=None)
            )
            session.commit()
            return bool(changed.rowcount)
