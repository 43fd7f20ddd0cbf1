"""Finds every new clip: S3 event notifications first, a reconciliation sweep behind.

- **Events** (the fast path): S3 -> SQS notifications, long-polled. A message is
  deleted only once the clips it names are committed; duplicates and reordering are
  harmless because a clip is bucket + key + ETag and recording it twice is a no-op.
- **Sweep** (the safety net): lists the watched prefixes in key order and records what
  the ledger (the clips table) lacks. It never skips a key because of its date: that
  is what made backlogs, skewed clocks and stray keys hide clips. One pass spends at
  most ``reconcile_pages`` LIST requests and resumes at its cursor the next time, so
  its cost is bounded however large the bucket; a bucket of N objects is covered every
  ``ceil(N / (page_size * reconcile_pages))`` passes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from orchestrator import telemetry
from orchestrator.domain.discovery import (
    BadNotification,
    FoundObject,
    Verdict,
    classify,
    parse_notification,
)
from orchestrator.domain.layout import clip_id
from orchestrator.domain.pipeline import Trigger
from orchestrator.event_queue import EventQueue, Message
from orchestrator.logs import about
from orchestrator.storage import ObjectInfo, S3Gateway
from orchestrator.store import Clip, Store
from orchestrator.store.models import RejectedObject

log = logging.getLogger("camflow.watcher")


@dataclass(frozen=True)
class WatchTarget:
    bucket: str
    prefix: str


def watch_targets(triggers: Iterable[Trigger], default_bucket: str) -> list[WatchTarget]:
    """One target per bucket and prefix; a prefix inside another one is dropped."""
    targets = sorted(
        {WatchTarget(t.bucket or default_bucket, t.prefix) for t in triggers},
        key=lambda t: (t.bucket, t.prefix),
    )
    kept: list[WatchTarget] = []
    for target in targets:
        if not any(k.bucket == target.bucket and target.prefix.startswith(k.prefix) for k in kept):
            kept.append(target)
    return kept


def found_in_listing(bucket: str, obj: ObjectInfo) -> FoundObject:
    return FoundObject(bucket, obj.key, obj.etag, obj.size, obj.last_modified)


def to_clip(obj: FoundObject, discovered_by: str | None = None) -> Clip | None:
    """The clip ``obj`` is, if its key names a tenant and a camera. A key without a
    date in the layout is a clip all the same, recorded at its upload time."""
    from orchestrator.domain.layout import parse_upload_key

    upload = parse_upload_key(obj.key)
    if upload is None:
        return None
    return Clip(
        id=clip_id(obj.bucket, obj.key, obj.etag),
        bucket=obj.bucket,
        key=obj.key,
        etag=obj.etag,
        size=obj.size,
        tenant=upload.tenant,
        camera=upload.camera,
        recorded_at=upload.recorded_at or obj.last_modified,
        last_modified=obj.last_modified,
        discovered_by=discovered_by,
    )


@dataclass
class Sorted:
    clips: list[Clip] = field(default_factory=list)
    rejected: list[RejectedObject] = field(default_factory=list)


@dataclass
class DrainReport:
    messages: int = 0
    new: int = 0


@dataclass
class SweepReport:
    listed: int = 0
    requests: int = 0
    new: int = 0
    rejected: int = 0
    #: Every target was listed to its end in this pass.
    complete: bool = True


class Watcher:
    def __init__(
        self,
        store: Store,
        s3: S3Gateway,
        triggers: Sequence[Trigger],
        default_bucket: str,
        results_bucket: str,
        queue: EventQueue | None = None,
        page_size: int = 1000,
        pages_per_pass: int = 100,
    ) -> None:
        self.store = store
        self.s3 = s3
        self.triggers = list(triggers)
        self.targets = watch_targets(self.triggers, default_bucket)
        self.default_bucket = default_bucket
        self.results_bucket = results_bucket
        self.queue = queue
        self.page_size = page_size
        self.pages_per_pass = pages_per_pass
        #: The target the next sweep pass starts with.
        self._next = 0

    # --- shared -------------------------------------------------------------------------

    def _sort(self, objects: Iterable[FoundObject], by: str) -> Sorted:
        out = Sorted()
        for obj in objects:
            judgement = classify(obj, self.triggers, self.default_bucket, self.results_bucket)
            if judgement.verdict == Verdict.CLIP:
                clip = to_clip(obj, by)
                if clip is not None:
                    out.clips.append(clip)
            elif judgement.verdict == Verdict.REJECT:
                out.rejected.append(
                    RejectedObject(
                        id=clip_id(obj.bucket, obj.key, obj.etag),
                        bucket=obj.bucket,
                        key=obj.key,
                        etag=obj.etag,
                        size=obj.size,
                        reason=judgement.reason or "not a clip",
                    )
                )
        return out

    def _record(self, found: Sorted, cursor: tuple[str, str | None] | None = None) -> list[Clip]:
        new = self.store.record_clips(found.clips, found.rejected, cursor)
        for clip in new:
            telemetry.clip_discovered(clip.discovered_by)
            log.info(
                "clip %s discovered by %s: s3://%s/%s (%d bytes, tenant %s, camera %s)",
                clip.id,
                clip.discovered_by,
                clip.bucket,
                clip.key,
                clip.size,
                clip.tenant,
                clip.camera,
                extra=about(clip.id),
            )
        for row in found.rejected:
            log.warning("not a clip: %s", row.reason)
        return new

    # --- events ---------------------------------------------------------------------------

    def drain(self, wait_seconds: int = 0) -> DrainReport:
        """One receive from the event queue: records the clips its messages name, then
        deletes those messages."""
        if self.queue is None:
            return DrainReport()
        messages = self.queue.receive(wait_seconds)
        if not messages:
            return DrainReport()
        objects: list[FoundObject] = []
        done: list[Message] = []
        for message in messages:
            try:
                objects += parse_notification(message.body)
            except BadNotification as exc:
                # Nothing to retry: it will never parse. The sweep finds whatever it meant.
                log.warning("dropped a queue message that is not an S3 event (%s)", exc)
            done.append(message)
        new = self._record(self._sort(objects, "event"))
        self.queue.delete(done)  # only now: the clips are committed
        return DrainReport(len(messages), len(new))

    # --- sweep ----------------------------------------------------------------------------

    def sweep(self) -> SweepReport:
        """One reconciliation pass over the watched prefixes, within its page budget."""
        report = SweepReport()
        budget = self.pages_per_pass
        # Each pass starts where the last one ran out of pages, so a big first target
        # can never starve the others.
        order = self.targets[self._next :] + self.targets[: self._next]
        for n, target in enumerate(order):
            if budget <= 0:
                report.complete = False
                self._next = (self._next + n) % len(self.targets)
                return report
            before = report.complete
            report.complete = True
            budget -= self._sweep_target(target, budget, report)
            if not report.complete:  # this target's listing continues next pass
                self._next = (self._next + n) % len(self.targets)
                return report
            report.complete = before
        self._next = 0
        return report

    def _sweep_target(self, target: WatchTarget, budget: int, report: SweepReport) -> int:
        name = f"sweep:s3://{target.bucket}/{target.prefix}"
        start_after = self.store.cursor(name)
        pages = 0
        for page in self.s3.list_pages(target.bucket, target.prefix, start_after, self.page_size):
            pages += 1
            report.requests += 1
            report.listed += len(page.objects)
            found = self._sort((found_in_listing(target.bucket, o) for o in page.objects), "sweep")
            # The cursor moves with the page's clips, in one transaction; at the end of
            # the listing it goes back to the start for the next pass.
            last = page.objects[-1].key if page.objects else start_after
            cursor = (name, last if page.truncated else None)
            report.new += len(self._record(found, cursor))
            report.rejected += len(found.rejected)
            if page.truncated and pages >= budget:
                report.complete = False
                break
        return pages

    def tick(self) -> int:
        """Drains what the queue holds now and sweeps once: new clips found. For tests,
        `camflow process` and anything else that wants discovery in the foreground."""
        found = 0
        while True:
            drained = self.drain(0)
            found += drained.new
            if not drained.messages:
                break
        return found + self.sweep().new
