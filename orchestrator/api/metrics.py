"""/metrics in Prometheus text format, read from the store at scrape time, so that it
is right whichever process did the work."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from orchestrator.store import Store
from orchestrator.store.models import as_utc

BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)


class StoreCollector:
    def __init__(self, store: Store, now: datetime) -> None:
        self.store, self.now = store, now

    def collect(self):  # type: ignore[no-untyped-def]
        clips, runs = self.store.counts()
        yield GaugeMetricFamily(
            "camflow_clips_discovered", "Clips the watcher has recorded.", value=clips
        )
        by_status = GaugeMetricFamily("camflow_runs", "Runs by status.", labels=["status"])
        for status, count in sorted(runs.items()):
            by_status.add_metric([status], count)
        yield by_status
        queue = GaugeMetricFamily(
            "camflow_stage_attempts_in_flight",
            "Stage attempts handed to an executor and not finished, by "
            "where they run (local or the cluster).",
            labels=["placement", "accelerator"],
        )
        for (placement, accelerator), count in sorted(self.store.in_flight().items()):
            queue.add_metric([placement or "unplaced", accelerator], count)
        yield queue
        durations = HistogramMetricFamily(
            "camflow_stage_duration_seconds",
            "Run time of finished stage attempts (last 1000).",
            labels=["stage"],
        )
        for stage, seconds in sorted(self.store.recent_durations().items()):
            buckets = [(str(b), sum(1 for s in seconds if s <= b)) for b in BUCKETS]
            buckets.append(("+Inf", len(seconds)))
            durations.add_metric([stage], buckets, sum_value=sum(seconds))
        yield durations
        newest = self.store.newest_discovery()
        lag = GaugeMetricFamily(
            "camflow_watcher_lag_seconds", "Seconds since the watcher last recorded a new clip."
        )
        if newest is not None:
            lag.add_metric([], (self.now - as_utc(newest)).total_seconds())
        yield lag
        yield GaugeMetricFamily(
            "camflow_rejected_objects",
            "Objects a trigger matches that cannot be clips (no tenant/camera in the key); "
            "`camflow rejected` lists them.",
            value=self.store.count_rejected(),
        )


def render_metrics(store: Store, now: datetime) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, now))  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_LATEST
