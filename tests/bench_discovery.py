"""Discovery: how soon an upload gets its run, and what an idle tick costs.

    python -m tests.bench_discovery

Prints, against baselines measured in the same run:
- upload -> run latency (p50, p95) with S3 event notifications, against the sweep
  alone (no notifications, as on MinIO): a real `Service` (lease, events thread, sweep,
  engine) over a moto S3+SQS server on HTTP;
- requests per idle tick over 10,000 cameras: one long-poll receive, against the
  previous release's watcher (a LIST for the tenants, one per tenant for its cameras,
  one per camera for its new keys), and what one reconciliation pass costs.
"""

from __future__ import annotations

import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

from orchestrator.domain.layout import upload_key
from orchestrator.embedded_s3 import EmbeddedS3
from orchestrator.service import Runtime, Service, open_runtime
from orchestrator.settings import Settings, load_settings
from tests.conftest import seed_objects

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime.now(UTC)


def _settings(server: EmbeddedS3, home: Path, events: bool, interval: float) -> Settings:
    suffix = uuid.uuid4().hex[:6]
    return load_settings(
        home=home,
        store={"url": f"sqlite:///{home / 'camflow.db'}"},
        s3={
            "endpoint_url": server.endpoint_url,
            "embedded": False,
            "ingest_bucket": f"bench-in-{suffix}",
            "results_bucket": f"bench-out-{suffix}",
            "access_key_id": "bench",
            "secret_access_key": "bench",
        },
        watcher={
            "queue": f"bench-{suffix}" if events else None,
            "configure_notifications": events,
            "wait_seconds": 10,
            "reconcile_interval_seconds": interval,
        },
        leader={"lease_seconds": 15, "renew_seconds": 5},
        engine={"interval_seconds": 1.0},
        api={"enabled": False},
        algorithm_dirs=[ROOT / "tests" / "stages"],
        pipeline_dirs=[ROOT / "tests" / "chaos_pipelines"],
    )


def _latencies(runtime: Runtime, clips: int, gap: float) -> list[float]:
    service = Service(runtime)
    service.start()
    uploaded: dict[str, datetime] = {}
    try:
        time.sleep(1.0)  # the first sweep and lease settle
        for i in range(clips):
            key = upload_key("bench", f"cam{i}", NOW - timedelta(hours=i % 5), n=i + 1)
            runtime.s3.client.put_object(
                Bucket=runtime.settings.s3.ingest_bucket, Key=key, Body=b"clip"
            )
            uploaded[key] = datetime.now(UTC)
            time.sleep(gap)
        deadline = time.monotonic() + 60
        created: dict[str, datetime] = {}
        while len(created) < clips and time.monotonic() < deadline:
            for run, clip in runtime.store.list_runs(limit=clips * 2):
                if clip.key in uploaded:
                    at = run.created_at
                    created[clip.key] = at if at.tzinfo else at.replace(tzinfo=UTC)
            time.sleep(0.2)
    finally:
        service.stop()
    return sorted((created[k] - uploaded[k]).total_seconds() for k in created)


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def _old_watcher_requests(runtime: Runtime) -> int:
    """What the previous release's tick cost: tenants, their cameras, each camera."""
    client, bucket = runtime.s3.client, runtime.settings.s3.ingest_bucket
    requests = 0

    def prefixes(prefix: str) -> list[str]:
        nonlocal requests
        found, token = [], None
        while True:
            kwargs = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/"}
            if token:
                kwargs["ContinuationToken"] = token
            page = client.list_objects_v2(**kwargs)
            requests += 1
            found += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            if not page.get("IsTruncated"):
                return found
            token = page["NextContinuationToken"]

    for tenant in prefixes(""):
        for camera in prefixes(tenant):
            client.list_objects_v2(Bucket=bucket, Prefix=camera, StartAfter=camera + "~")
            requests += 1
    return requests


def _idle_cost(server: EmbeddedS3, home: Path, cameras: int) -> tuple[int, int, int]:
    settings = _settings(server, home, events=True, interval=60)
    # Seeded before notifications exist: these are old clips, not news.
    seed_objects(
        settings.s3.ingest_bucket,
        [upload_key(f"t{i % 100}", f"cam{i}", NOW) for i in range(cameras)],
    )
    with open_runtime(settings) as runtime:
        runtime.watcher.sweep()  # caught up
        runtime.watcher.drain(0)  # S3's s3:TestEvent, sent when notifications were set up
        calls: list[str] = []
        for client in (runtime.s3.client, runtime.watcher.queue.client):  # type: ignore[union-attr]
            client.meta.events.register("before-send", lambda request, **_: calls.append("x"))
        runtime.watcher.drain(0)
        ours = len(calls)
        calls.clear()
        runtime.watcher.sweep()
        sweep = len(calls)
        return ours, sweep, _old_watcher_requests(runtime)


def main() -> None:
    server = EmbeddedS3().start()
    with TemporaryDirectory() as folder:
        base = Path(folder)
        with open_runtime(_settings(server, base / "events", events=True, interval=60)) as rt:
            events = _latencies(rt, clips=40, gap=0.25)
        with open_runtime(_settings(server, base / "sweep", events=False, interval=5)) as rt:
            sweep = _latencies(rt, clips=20, gap=0.5)
        ours, sweep_pass, old = _idle_cost(server, base / "idle", 10_000)
    server.stop()
    print(
        f"upload -> run, events      p50 {_p(events, 50):6.2f} s   p95 {_p(events, 95):6.2f} s"
        f"   ({len(events)} clips)"
    )
    print(
        f"upload -> run, sweep alone p50 {_p(sweep, 50):6.2f} s   p95 {_p(sweep, 95):6.2f} s"
        f"   (every 5 s; {len(sweep)} clips)   p95 x{_p(sweep, 95) / _p(events, 95):.1f} slower"
    )
    print(
        f"idle tick over 10000 cameras: ours {ours} request(s), previous watcher {old}"
        f"   x{old / max(ours, 1):.0f}"
    )
    print(f"one reconciliation pass over 10000 clips: {sweep_pass} LIST requests")


if __name__ == "__main__":
    main()
