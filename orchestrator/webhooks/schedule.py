"""When a failed delivery is tried again (exponential backoff with jitter, within a
horizon), and what an attempt's outcome makes of a delivery. Pure: the clock's
reading and the random draw are passed in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from orchestrator.store.webhooks import DeliveryState


@dataclass(frozen=True)
class RetrySchedule:
    base_seconds: float = 5
    max_seconds: float = 3600
    #: No attempt is made later than this after the delivery was queued (or replayed).
    horizon_seconds: float = 86_400

    def delay(self, attempts: int, draw: float) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1 for the first),
        with ``draw`` in [0, 1): "equal jitter", half the exponential delay plus a
        random part of the other half. Receivers that all went down at once (a shared
        outage) then do not get every retry in the same second, and no retry comes
        sooner than half its step."""
        exponent = min(max(attempts - 1, 0), 32)  # 2**32 times the base is past any maximum
        step = min(self.max_seconds, self.base_seconds * 2**exponent)
        return step / 2 + step / 2 * draw

    def next_attempt(
        self, attempts: int, now: datetime, window_started_at: datetime, draw: float
    ) -> datetime | None:
        """When to try again after a failed attempt, or None: the next one would come
        past the horizon, so the delivery has failed (it is kept, for a replay)."""
        at = now + timedelta(seconds=self.delay(attempts, draw))
        if at > window_started_at + timedelta(seconds=self.horizon_seconds):
            return None
        return at


@dataclass(frozen=True)
class Sent:
    """What one attempt came to: accepted (a 2xx), or not and why."""

    accepted: bool
    status: int | None = None
    error: str | None = None


def after_attempt(
    schedule: RetrySchedule,
    attempts_before: int,
    window_started_at: datetime,
    sent: Sent,
    now: datetime,
    draw: float,
) -> dict[str, Any]:
    """The delivery's new values once an attempt has ``sent``: delivered; or pending
    with its next attempt; or failed, when the next would fall past the horizon."""
    attempts = attempts_before + 1
    values: dict[str, Any] = {
        "attempts": attempts,
        "last_attempt_at": now,
        "last_status": sent.status,
        "last_error": sent.error,
    }
    if sent.accepted:
        return {**values, "state": DeliveryState.DELIVERED, "delivered_at": now}
    at = schedule.next_attempt(attempts, now, window_started_at, draw)
    if at is None:
        return {**values, "state": DeliveryState.FAILED}
    return {**values, "state": DeliveryState.PENDING, "next_attempt_at": at}
