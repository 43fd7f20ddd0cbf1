"""Wiring: settings in, a running watcher + engine + executor out."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from orchestrator import gc_tuning
from orchestrator.domain.catalog import Catalog, load_pipeline_specs
from orchestrator.embedded_s3 import EmbeddedS3, choose_s3
from orchestrator.engine.decide import RetryPolicy
from orchestrator.engine.reconciler import Reconciler, TickReport
from orchestrator.event_queue import EventQueue
from orchestrator.executors.base import Executor
from orchestrator.executors.local import LocalExecutor
from orchestrator.fileio import write_json_atomic
from orchestrator.grants.brokers import Broker
from orchestrator.grants.choice import broker_for
from orchestrator.leadership import Leadership
from orchestrator.registry import CatalogCache, Registry
from orchestrator.settings import PROJECT_ROOT, Settings
from orchestrator.storage import S3Access, S3Gateway
from orchestrator.store import Store
from orchestrator.watcher import Watcher
from orchestrator.webhooks.delivery import DeliveryWorker

log = logging.getLogger("camflow.service")

#: How often `serve` deletes stage credentials whose time is up.
CREDENTIAL_SWEEP_SECONDS = 60
#: How long closing waits for the opening's sweep of credentials.
SWEEP_JOIN_SECONDS = 5.0


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
    #: Mints stages' storage credentials; None where the executor gets none (a
    #: Kubernetes executor whose clusters name an S3 Secret of their own).
    broker: Broker | None = None
    #: The opening's sweep of stale credentials, while it runs.
    sweeping: threading.Thread | None = None

    @property
    def catalog(self) -> Catalog:
        return self.catalogs.current()

    @property
    def registry(self) -> Registry:
        return self.catalogs.registry

    def close(self) -> None:
        if self.sweeping is not None:
            # Before the embedded S3 and IAM stop under it (a short command); a slow
            # IAM is left to finish on its own (the thread is a daemon).
            self.sweeping.join(timeout=SWEEP_JOIN_SECONDS)
        self.executor.close()
        self.store.close()
        if self.embedded is not None:
            self.embedded.stop()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def s3_access(settings: Settings, durable: bool = False) -> tuple[S3Access, EmbeddedS3 | None]:
    """The S3 to use, said in one log line. ``durable`` (`serve`): an embedded S3 keeps
    its objects under <home>/s3 and listens on s3.embedded_port; else it is in memory on
    a free port, as one-shot commands need (they save what they keep locally)."""
    choice = choose_s3(settings)
    if choice.embedded:
        embedded = (
            EmbeddedS3(settings.s3.embedded_port, settings.home / "s3", enforce=True)
            if durable
            else EmbeddedS3(enforce=True)
        ).start()
        log.info("S3: %s", embedded.describe())
        return embedded.access(settings.s3.region), embedded
    log.info(
        "S3: %s, credentials from %s",
        settings.s3_endpoint or f"AWS ({settings.s3.region})",
        choice.credentials,
    )
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


#: The queue camflow makes for itself where it configures notifications.
DEFAULT_QUEUE = "camflow-clip-events"


def event_queue(
    settings: Settings, access: S3Access, s3: S3Gateway, embedded: bool, buckets: set[str]
) -> EventQueue | None:
    """The SQS queue for S3 notifications, if there is one; set up when camflow is to
    configure notifications itself (always on the embedded S3)."""
    configure = settings.watcher.configure_notifications
    if configure is None:
        configure = embedded
    name = settings.watcher.queue or (DEFAULT_QUEUE if configure else None)
    if name is None:
        log.info("no event queue configured: the reconciliation sweep alone finds clips")
        return None
    queue = EventQueue(access, name)
    if configure:
        queue.subscribe(s3.client, sorted(buckets))
    return queue


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


def open_runtime(
    settings: Settings, executor: Executor | None = None, durable_s3: bool = False
) -> Runtime:
    """Connects S3 (embedded if none is configured), opens the store, registers the
    configured algorithm folders and loads the pipelines against the registry."""
    with contextlib.ExitStack() as undo:  # what is open so far, closed if a step fails
        access, embedded = s3_access(settings, durable_s3)
        if embedded is not None:
            undo.callback(embedded.stop)
        # Only an executor camflow makes here runs stages that need credentials; one
        # handed in (a test's, the bench's instant one) brings its own arrangement.
        broker = broker_for(settings, access) if executor is None else None
        if executor is None and settings.executor != "kubernetes":
            # First: its spare stage process imports while the rest opens, and is
            # ready when the first batch comes.
            executor = LocalExecutor(
                settings.home / "attempts",
                max_parallel=settings.local.max_parallel,
                gpus=settings.local.gpus,
                kill_grace_seconds=settings.local.kill_grace_seconds,
                base_env=access.stage_env(),
                cwd=PROJECT_ROOT,
                batch_linger_seconds=settings.local.batch_linger_seconds,
                broker=broker,
                spare=settings.local.spare_process,
            )
            undo.callback(executor.close)
        store = Store(settings.store_url)
        undo.callback(store.close)
        catalogs = open_catalogs(store, settings)
        catalog = catalogs.current()
        s3 = S3Gateway(access)
        buckets = {settings.s3.results_bucket, settings.s3.ingest_bucket}
        for bucket in sorted(buckets | trigger_buckets(catalog, settings)):
            s3.ensure_bucket(bucket)
        if executor is None:
            from orchestrator.kube.actions import StoreActionLog
            from orchestrator.kube.executor import KubernetesExecutor

            executor = KubernetesExecutor(
                settings.kubernetes.clusters, actions=StoreActionLog(store), broker=broker
            )
            undo.callback(executor.close)
        queue = event_queue(
            settings, access, s3, embedded is not None, trigger_buckets(catalog, settings)
        )
        watcher = Watcher(
            store,
            s3,
            [p.spec.trigger for p in catalog.pipelines.values()],
            settings.s3.ingest_bucket,
            settings.s3.results_bucket,
            queue,
            page_size=settings.watcher.page_size,
            pages_per_pass=settings.watcher.reconcile_pages,
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
            max_result_bytes=settings.engine.max_result_bytes,
            max_manifest_bytes=settings.engine.max_manifest_bytes,
            max_erroring_ticks=settings.engine.max_erroring_ticks,
            batch_max_size=settings.engine.batch_max_size,
            batch_max_wait_seconds=settings.engine.batch_max_wait_seconds,
            fuse_stages=settings.engine.fuse_stages,
        )
        gc_tuning.tune_for_service()
        sweeping = None
        if broker is not None:
            # Now, beside the command's start: credentials a crash left end here, and the
            # first stage's minting does not wait for IAM's first answer (the embedded
            # one builds its backend then: 0.1 s).
            sweeping = threading.Thread(
                target=_guarded("opening credentials sweep", broker.sweep),
                name="camflow-credentials",
                daemon=True,
            )
            sweeping.start()
        undo.pop_all()  # open: Runtime.close() closes them from now on
        return Runtime(
            settings, catalogs, store, s3, executor, watcher, reconciler, embedded, broker, sweeping
        )


def _guarded(name: str, job: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            job()
        except Exception:
            # One failed tick (S3 or the database briefly away) must not stop the loop.
            log.exception("%s tick failed; retrying at the next tick", name)

    return run


class Service:
    """One `camflow serve` replica's background work, as APScheduler jobs: holding
    or seeking the lease, the reconciliation sweep and the engine; plus a thread that
    long-polls the event queue (a long poll is a wait, not a periodic job). Only the
    leader discovers and runs the engine."""

    def __init__(self, runtime: Runtime, leadership: Leadership | None = None) -> None:
        self.runtime = runtime
        settings = runtime.settings
        self.leadership = leadership or Leadership(runtime.store, settings.leader.lease_seconds)
        self.scheduler = BackgroundScheduler(
            timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1}
        )
        self._stopping = threading.Event()
        self._engine_busy = threading.Event()
        # A leader that loses the lease mid-tick stops acting at its next step.
        runtime.reconciler.may_act = lambda: self.leadership.leading
        self._events: threading.Thread | None = None
        self.webhooks: DeliveryWorker | None = None

    def start(self) -> None:
        now = datetime.now(UTC)
        settings = self.runtime.settings
        _guarded("lease", self._renew)()
        self.scheduler.add_job(
            _guarded("lease", self._renew),
            "interval",
            seconds=settings.leader.renew_seconds,
            id="lease",
        )
        self.scheduler.add_job(
            _guarded("sweep", self._sweep),
            "interval",
            seconds=settings.watcher.reconcile_interval_seconds,
            next_run_time=now,
            id="sweep",
        )
        if self.runtime.broker is not None:
            # Stage credentials left by a crash, or outliving their stage, end here.
            # (The first at open_runtime.)
            self.scheduler.add_job(
                _guarded("credentials", self.runtime.broker.sweep),
                "interval",
                seconds=CREDENTIAL_SWEEP_SECONDS,
                next_run_time=now + timedelta(seconds=CREDENTIAL_SWEEP_SECONDS),
                id="credentials",
            )
        self.scheduler.add_job(
            _guarded("engine", self._engine_tick),
            "interval",
            seconds=settings.engine.interval_seconds,
            next_run_time=now,
            id="engine",
        )
        # Every replica sends webhooks (claims keep them apart), beside the engine.
        self.webhooks = DeliveryWorker(self.runtime.store, settings.webhooks)
        self.scheduler.add_job(
            _guarded("webhooks", self.webhooks.run_once),
            "interval",
            seconds=settings.webhooks.interval_seconds,
            next_run_time=now,
            id="webhooks",
        )
        self.scheduler.start()
        if self.runtime.watcher.queue is not None:
            self._events = threading.Thread(
                target=self._drain_events, name="camflow-events", daemon=True
            )
            self._events.start()
        if getattr(self.runtime.executor, "wait", None) is not None:
            threading.Thread(target=self._follow_stages, name="camflow-stages", daemon=True).start()

    def _renew(self) -> None:
        if not self.leadership.renew():
            # A follower that reaches the store is as healthy as it needs to be.
            write_heartbeat(self.runtime.settings.home)

    def _sweep(self) -> None:
        if not self.leadership.leading:
            return
        report = self.runtime.watcher.sweep()
        log.debug(
            "sweep: %d objects listed in %d requests, %d new clips%s",
            report.listed,
            report.requests,
            report.new,
            "" if report.complete else " (page budget spent; resumes at its cursor)",
        )
        if report.new:
            self._wake_engine()

    def _drain_events(self) -> None:
        wait = self.runtime.settings.watcher.wait_seconds
        while not self._stopping.is_set():
            if not self.leadership.leading:
                self._stopping.wait(1)
                continue
            try:
                if self.runtime.watcher.drain(wait).new:
                    self._wake_engine()
            except Exception:
                log.exception("reading the event queue failed; the sweep covers the gap")
                self._stopping.wait(min(5, wait or 1))

    def _follow_stages(self) -> None:
        """Wakes the engine when a stage finishes, so that the next stage starts then
        rather than at the engine's next interval."""
        interval = self.runtime.settings.engine.interval_seconds
        wait = self.runtime.executor.wait  # type: ignore[attr-defined]
        while not self._stopping.is_set():
            if not self.leadership.leading:
                self._stopping.wait(interval)  # a follower's executor starts nothing
                continue
            started = time.monotonic()
            try:
                wait(interval)
            except Exception:  # a stat that failed: the interval still covers it
                log.debug("waiting for stages failed", exc_info=True)
                self._stopping.wait(interval)
                continue
            if time.monotonic() - started < interval:
                self._wake_engine()
            # Never a busy loop, whatever the executor answers.
            self._stopping.wait(0.02)

    def _wake_engine(self) -> None:
        # New clips get their runs now rather than at the next interval (a tick under
        # way will see them anyway).
        if self._engine_busy.is_set():
            return
        with contextlib.suppress(Exception):
            self.scheduler.modify_job("engine", next_run_time=datetime.now(UTC))

    def _engine_tick(self) -> None:
        if not self.leadership.leading:
            return
        self._engine_busy.set()
        try:
            self._leader_tick()
        finally:
            self._engine_busy.clear()

    def _leader_tick(self) -> None:
        # A tick that raises (the store away) writes no heartbeat: the probes should see
        # it. One whose runs had trouble finished all the same, and says how many.
        report = self.runtime.reconciler.tick()
        write_heartbeat(self.runtime.settings.home, report)

    def stop(self) -> None:
        self._stopping.set()
        if self.webhooks is not None:
            self.webhooks.stop()
        self.scheduler.shutdown(wait=True)
        if self.webhooks is not None:
            self.webhooks.close()
        if self._events is not None:
            self._events.join(timeout=self.runtime.settings.watcher.wait_seconds + 5)
        with contextlib.suppress(Exception):
            self.leadership.release()


HEARTBEAT = "heartbeat"


def write_heartbeat(home: Path, report: TickReport | None = None) -> None:
    """Each finished engine tick says so, with what it did: what `camflow health` and
    /readyz (the probes) read."""
    home.mkdir(parents=True, exist_ok=True)
    beat: dict[str, object] = {"at": datetime.now(UTC).isoformat()}
    if report is not None:
        beat["tick"] = {
            "planned": report.planned,
            "started": report.started,
            "finished": len(report.finished),
            "active": report.active,
            "errors": report.errors,
        }
    # Replaced whole, so that a probe never reads half a file and calls us dead.
    write_json_atomic(home / HEARTBEAT, beat)


def read_heartbeat(home: Path) -> dict[str, Any] | None:
    """The last tick's heartbeat: ``at`` (aware) and ``tick`` (its summary, if any)."""
    try:
        text = (home / HEARTBEAT).read_text().strip()
        # An older camflow wrote the bare time.
        beat = json.loads(text) if text.startswith("{") else {"at": text}
        beat["at"] = datetime.fromisoformat(beat["at"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return beat if isinstance(beat["at"], datetime) and beat["at"].tzinfo else None


def heartbeat_age(home: Path) -> float | None:
    """Seconds since the engine last finished a tick; None if it never did."""
    beat = read_heartbeat(home)
    return None if beat is None else (datetime.now(UTC) - beat["at"]).total_seconds()


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
        pending = runtime.store.unfinished_runs(pending)
        if on_tick:
            on_tick(report, len(pending))
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} run(s) still unfinished after {timeout:g} s")
        # An executor that can tell when a stage finishes wakes us then (the next stage
        # starts at once); otherwise the next look is an interval away.
        wait = getattr(runtime.executor, "wait", None)
        if wait is not None:
            wait(interval)
        else:
            time.sleep(interval)
