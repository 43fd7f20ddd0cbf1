"""One leader among `camflow serve` replicas sharing a store, by a lease in the store.

The leader discovers clips and runs the engine; the others serve the API and try to
take the lease each renewal period, so a leader that dies is replaced within one lease
period of its last renewal. Why a lease rather than claims on rows: the engine's
decisions look at a whole run (and at capacity across runs), which one decider makes
consistently; and every side effect is keyed anyway (deterministic attempt ids, Job
names, claimed attempt folders), so a deposed leader that has not noticed yet can
only repeat what is already there, never add a second execution.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from orchestrator.store import Store
from orchestrator.store.models import utcnow

log = logging.getLogger("camflow.leader")

LEASE = "engine"


def replica_name() -> str:
    """Unique per process: a restarted replica is a new holder."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Leadership:
    def __init__(
        self,
        store: Store,
        lease_seconds: float,
        holder: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.holder = holder or replica_name()
        self.clock = clock
        self.monotonic = monotonic
        self.epoch: int | None = None
        #: Until when (on this process's monotonic clock) we may act as leader: the
        #: lease's length from the moment we asked, less a margin for clock rates.
        self._valid_until = 0.0

    def renew(self) -> bool:
        """Takes or renews the lease; True while this replica leads."""
        asked = self.monotonic()
        now = self.clock()
        epoch = self.store.hold_lease(
            LEASE, self.holder, now, now + timedelta(seconds=self.lease_seconds)
        )
        was = self.epoch
        self.epoch = epoch
        if epoch is None:
            self._valid_until = 0.0
            if was is not None:
                log.warning("replica %s lost the lease; now a follower", self.holder)
            return False
        self._valid_until = asked + self.lease_seconds * 0.8
        if was != epoch:
            log.info("replica %s leads (lease epoch %d)", self.holder, epoch)
        return True

    @property
    def leading(self) -> bool:
        return self.epoch is not None and self.monotonic() < self._valid_until

    def release(self) -> None:
        if self.epoch is not None:
            self.store.release_lease(LEASE, self.holder)
            log.info("replica %s gave the lease up", self.holder)
        self.epoch, self._valid_until = None, 0.0
