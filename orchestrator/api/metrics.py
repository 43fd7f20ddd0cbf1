"""/metrics in Prometheus text format: what this process did, and the state of the
store it shares with the other replicas.

- **Counters and histograms** (``*_total``, ``camflow_stage_duration_seconds``) are
  this process's own, observed where the event happens (orchestrator.telemetry says
  why): cumulative, so ``rate()`` and ``histogram_quantile()`` are right; they start
  again at zero when the process does, which Prometheus handles. Only the leader
  discovers clips and runs the engine: aggregate them over pods with ``sum``.
- **Gauges** of current state are read from the store at each scrape, so every
  replica, leader or follower, reports the same figures: aggregate them with ``max``,
  never ``sum``. Each is an aggregate over a bounded part of the store (active runs,
  unfinished attempts) so that a scrape costs the same however long the history.
- The default registry's process and Python metrics (``process_*``, ``python_*``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

import orchestrator.telemetry  # noqa: F401  (registers the in-process metrics)
from orchestrator import operations
from orchestrator.operations import UNPLACED
from orchestrator.store import Store
from orchestrator.store.models import AttemptState, as_utc
from orchestrator.store.repository import ACTIVE
from orchestrator.store.webhooks import DeliveryState
from orchestrator.webhooks import delivery  # noqa: F401  (registers the webhook attempt counter)
from orchestrator.webhooks.outbox import Outbox

#: The window of the watcher's discovery delay: long enough to span a sweep interval.
DISCOVERY_WINDOW = timedelta(minutes=10)


class StoreCollector(Collector):
    """The store's current state, read at each scrape."""

    def __init__(
        self, store: Store, now: datetime, gpu_slots: Mapping[str, int] | None = None
    ) -> None:
        self.store, self.now = store, now
        self.gpu_slots = dict(gpu_slots or {})

    def collect(self) -> Iterator[Metric]:
        runs = self.store.active_run_counts()
        active = GaugeMetricFamily(
            "camflow_runs_active", "Runs waiting or under way, by status.", labels=["status"]
        )
        for status in ACTIVE:  # both always, so that "none running" is a 0, not absent
            active.add_metric([str(status)], runs.get(str(status), 0))
        yield active

        in_flight: dict[tuple[str, str, str], int] = {}
        for placement, accelerator, state, started, count in operations.attempt_counts(self.store):
            phase = "running" if state == AttemptState.RUNNING and started else "queued"
            key = (placement or UNPLACED, accelerator, phase)
            in_flight[key] = in_flight.get(key, 0) + count
        queue = GaugeMetricFamily(
            "camflow_stage_attempts_in_flight",
            "Stage attempts recorded and not finished, by where they were placed (local, "
            f"a cluster's name, or {UNPLACED} before any), accelerator and state (queued: "
            "waiting for a slot, a node or an image; running: its code has started).",
            labels=["placement", "accelerator", "state"],
        )
        for labels, count in sorted(in_flight.items()):
            queue.add_metric(list(labels), count)
        yield queue

        in_use = operations.gpu_slots_in_use(self.store)
        used = GaugeMetricFamily(
            "camflow_gpu_slots_in_use",
            "GPU executions handed out and not finished, by placement (a batch of clips "
            "in one process holds one slot).",
            labels=["placement"],
        )
        for placement in sorted(set(in_use) | set(self.gpu_slots)):
            used.add_metric([placement], in_use.get(placement, 0))
        yield used
        slots = GaugeMetricFamily(
            "camflow_gpu_slots",
            "GPU slots the configuration offers, by placement (local.gpus, or each "
            "cluster's gpu.slots).",
            labels=["placement"],
        )
        for placement, total in sorted(self.gpu_slots.items()):
            slots.add_metric([placement], total)
        yield slots

        lag = GaugeMetricFamily(
            "camflow_watcher_lag_seconds", "Seconds since the watcher last recorded a new clip."
        )
        newest = self.store.newest_discovery()
        if newest is not None:
            lag.add_metric([], (self.now - as_utc(newest)).total_seconds())
        yield lag

        yield GaugeMetricFamily(
            "camflow_watcher_discovery_delay_seconds",
            "The longest wait from upload (S3 LastModified) to record among the clips "
            f"recorded in the last {int(DISCOVERY_WINDOW.total_seconds())} s (0: none).",
            value=operations.discovery_delay(self.store, self.now, DISCOVERY_WINDOW),
        )

        yield GaugeMetricFamily(
            "camflow_rejected_objects",
            "Objects a trigger matches that cannot be clips (no tenant/camera in the key); "
            "`camflow rejected` lists them.",
            value=self.store.count_rejected(),
        )

        webhooks = Outbox(self.store).counts()
        yield GaugeMetricFamily(
            "camflow_webhook_deliveries_pending",
            "Webhook deliveries not yet accepted by their endpoint and still being retried.",
            value=webhooks[DeliveryState.PENDING],
        )
        yield GaugeMetricFamily(
            "camflow_webhook_deliveries_failed",
            "Webhook deliveries retried until the horizon and never accepted; "
            "`camflow webhooks deliveries --state failed` lists them for replay.",
            value=webhooks[DeliveryState.FAILED],
        )


class _ThisProcess(Collector):
    """The default registry's metrics (camflow's counters, process and Python), read
    next to the store's in one exposition."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def render_metrics(
    store: Store, now: datetime, gpu_slots: Mapping[str, int] | None = None
) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ThisProcess())
    registry.register(StoreCollector(store, now, gpu_slots))
    return generate_latest(registry), CONTENT_TYPE_LATEST
