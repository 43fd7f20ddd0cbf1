"""Wiring: settings in, a running watcher + engine + executor out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler

from orchestrator.domain.catalog import Catalog, load_pipeline_specs
from orchestrator.engine.decide import RetryPolicy
from orchestrator.engine.reconciler import Reconciler, TickReport
from orchestrator.executors.base import Executor
from orchestrator.executors.local import LocalExecutor
from orchestrator.registry import CatalogCache, Registry
from orchestrator.settings import PROJECT_ROOT, Settings
from orchestrator.storage import EmbeddedS3, S3Access, S3Gateway
from orchestrator.store import Store
from orchestrator.store.models import RunStatus
from orchestrator.watcher import Watcher, watch_targets

log = logging.getLogger("camflow.service")


@dataclass
class Runtime:
    settings: Settings
    catalogs: CatalogCache
    store: Store
    s3: S3Gateway
    executor: Executor
    watcher: Watcher
    reconciler: Reconciler
    embedded: EmbeddedS3 | None

    @property
    def catalog(self) -> Catalog:
        return self.catalogs.current()

    @property
    def registry(self) -> Registry:
        return self.catalogs.registry

    def close(self) -> None:
        self.executor.close()
        self.store.close()
        if self.embedded is not None:
            self.embedded.stop()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def s3_access(settings: Settings) -> tuple[S3Access, EmbeddedS3 | None]:
    if settings.wants_embedded_s3:
        embedded = EmbeddedS3().start()
        return embedded.access(settings.s3.region), embedded
    secret = settings.s3.secret_access_key
    return (
        S3Access(
            settings.s3_endpoint,
            settings.s3.region,
            settings.s3.access_key_id,
            secret.get_secret_value() if secret else None,
        ),
        None,
    )


def trigger_buckets(catalog: Catalog, settings: Settings) -> set[str]:
    return {p.spec.trigger.bucket or settings.s3.ingest_bucket for p in catalog.pipelines.values()}


def open_catalogs(store: Store, settings: Settings) -> CatalogCache:
    """Registers the configured algorithm folders, then loads the pipelines against the
    registry (so channels and algorithms registered elsewhere resolve)."""
    registry = Registry(store)
    registry.sync(settings.algorithm_dirs)
    catalogs = CatalogCache(registry, load_pipeline_specs(settings.pipeline_dirs))
    catalogs.current()  # a bad pipeline file stops us here, with its name
    return catalogs


def open_runtime(settings: Settings, executor: Executor | None = None) -> Runtime:
    """Opens the store, registers the configured algorithm folders, loads the pipelines
    against the registry, and connects S3 (embedded if none is configured)."""
    store = Store(settings.store_url)
    try:
        catalogs = open_catalogs(store, settings)
        catalog = catalogs.current()
    except Exception:
        store.close()
        raise
    access, embedded = s3_access(settings)
    try:
        s3 = S3Gateway(access)
        buckets = {settings.s3.results_bucket, settings.s3.ingest_bucket}
        for bucket in sorted(buckets | trigger_buckets(catalog, settings)):
            s3.ensure_bucket(bucket)
    except Exception:
        store.close()
        if embedded:
            embedded.stop()
        raise
    if executor is None and settings.executor == "kubernetes":
        from orchestrator.kube.executor import KubernetesExecutor

        executor = KubernetesExecutor(settings.kubernetes.clusters)
    executor = executor or LocalExecutor(
        settings.home / "attempts",
        max_parallel=settings.local.max_parallel,
        gpus=settings.local.gpus,
        kill_grace_seconds=settings.local.kill_grace_seconds,
        base_env=access.stage_env(),
        cwd=PROJECT_ROOT,
    )
    triggers = [p.spec.trigger for p in catalog.pipelines.values()]
    watcher = Watcher(
        store,
        s3,
        watch_targets(triggers, settings.s3.ingest_bucket),
        triggers,
        settings.s3.ingest_bucket,
        lookback=timedelta(seconds=settings.watcher.lookback_seconds),
        page_size=settings.watcher.page_size,
    )
    reconciler = Reconciler(
        store,
        catalogs.current,
        executor,
        s3,
        settings.s3.results_bucket,
        settings.s3.ingest_bucket,
        RetryPolicy(
            backoff_seconds=settings.engine.retry_backoff_seconds,
            backoff_max_seconds=settings.engine.retry_backoff_max_seconds,
        ),
    )
    return Runtime(settings, catalogs, store, s3, executor, watcher, reconciler, embedded)


def _guarded(name: str, job: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            job()
        except Exception:
            # One failed tick (S3 or the database briefly away) must not stop the loop.
            log.exception("%s tick failed; retrying at the next tick", name)

    return run


class Service:
    """The watcher and the engine as APScheduler interval jobs."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.scheduler = BackgroundScheduler(
            timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1}
        )

    def start(self) -> None:
        now = datetime.now(UTC)
        settings = self.runtime.settings
        self.scheduler.add_job(
            _guarded("watcher", self.runtime.watcher.tick),
            "interval",
            seconds=settings.watcher.interval_seconds,
            next_run_time=now,
            id="watcher",
        )
        self.scheduler.add_job(
            _guarded("engine", self._engine_tick),
            "interval",
            seconds=settings.engine.interval_seconds,
            next_run_time=now,
            id="engine",
        )
        self.scheduler.start()

    def _engine_tick(self) -> None:
        self.runtime.reconciler.tick()
        write_heartbeat(self.runtime.settings.home)

    def stop(self) -> None:
        self.scheduler.shutdown(wait=True)


HEARTBEAT = "heartbeat"


def write_heartbeat(home: Path) -> None:
    """Each finished engine tick says so: what `camflow health` (the probes) reads."""
    home.mkdir(parents=True, exist_ok=True)
    (home / HEARTBEAT).write_text(datetime.now(UTC).isoformat())


def heartbeat_age(home: Path) -> float | None:
    """Seconds since the engine last finished a tick; None if it never did."""
    try:
        beat = datetime.fromisoformat((home / HEARTBEAT).read_text().strip())
    except (OSError, ValueError):
        return None
    return (datetime.now(UTC) - beat).total_seconds()


def drive(
    runtime: Runtime,
    run_ids: Iterable[str],
    timeout: float,
    interval: float = 0.5,
    on_tick: Callable[[TickReport, int], None] | None = None,
) -> None:
    """Ticks the engine in the foreground until the given runs have all finished."""
    pending = set(run_ids)
    deadline = time.monotonic() + timeout
    while pending:
        report = runtime.reconciler.tick(only=pending)
        pending = {
            rid for rid in pending if not RunStatus(runtime.store.get_run(rid).status).terminal
        }
        if on_tick:
            on_tick(report, len(pending))
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} run(s) still unfinished after {timeout:g} s")
        time.sleep(interval)
