"""Finds new clips in S3, incrementally; run as an APScheduler interval job.

Each tick lists the tenants and cameras under each watched prefix (a request per
level) and then each camera's new keys only (``StartAfter`` its checkpoint): the
cost of a tick grows with what is new, not with what the bucket holds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from orchestrator.domain.layout import clip_id, listing_start_after, parse_upload_key
from orchestrator.domain.pipeline import Trigger
from orchestrator.storage import ObjectInfo, S3Gateway
from orchestrator.store import Clip, Store

log = logging.getLogger("camflow.watcher")

#: Uploads are <tenant>/<camera>/...: a camera's prefix is two segments deep.
CAMERA_DEPTH = 2


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


def to_clip(bucket: str, obj: ObjectInfo) -> Clip | None:
    parsed = parse_upload_key(obj.key)
    if parsed is None:
        return None
    return Clip(
        id=clip_id(bucket, obj.key, obj.etag),
        bucket=bucket,
        key=obj.key,
        etag=obj.etag,
        size=obj.size,
        tenant=parsed.tenant,
        camera=parsed.camera,
        recorded_at=parsed.recorded_at,
        last_modified=obj.last_modified,
    )


class Watcher:
    def __init__(
        self,
        store: Store,
        s3: S3Gateway,
        targets: list[WatchTarget],
        triggers: list[Trigger],
        default_bucket: str,
        lookback: timedelta = timedelta(seconds=300),
        page_size: int = 1000,
    ) -> None:
        self.store = store
        self.s3 = s3
        self.targets = targets
        self.triggers = triggers
        self.default_bucket = default_bucket
        self.lookback = lookback
        self.page_size = page_size

    def camera_prefixes(self, target: WatchTarget) -> list[str]:
        prefix = target.prefix
        if prefix.count("/") >= CAMERA_DEPTH:
            return [prefix]
        base = prefix[: prefix.rfind("/") + 1]
        found: list[str] = []
        for child in self.s3.child_prefixes(target.bucket, base):
            if child.startswith(prefix) or prefix.startswith(child):
                found += self.camera_prefixes(WatchTarget(target.bucket, child))
        return found

    def _wanted(self, bucket: str, key: str) -> bool:
        return any(t.matches(bucket, key, self.default_bucket) for t in self.triggers)

    def scan(self, bucket: str, prefix: str) -> list[Clip]:
        checkpoint_id = f"s3://{bucket}/{prefix}"
        checkpoint = self.store.checkpoint(checkpoint_id)
        start_after = listing_start_after(checkpoint, self.lookback)
        clips, last_key = [], checkpoint
        for obj in self.s3.list_after(bucket, prefix, start_after, self.page_size):
            if last_key is None or obj.key > last_key:
                last_key = obj.key
            if obj.key.endswith("/") or not self._wanted(bucket, obj.key):
                continue
            clip = to_clip(bucket, obj)
            if clip is not None:
                clips.append(clip)
        new = self.store.record_clips(clips, checkpoint_id, last_key)
        for clip in new:
            log.info(
                "clip %s discovered: s3://%s/%s (%d bytes, tenant %s, camera %s)",
                clip.id,
                clip.bucket,
                clip.key,
                clip.size,
                clip.tenant,
                clip.camera,
            )
        return new

    def tick(self) -> int:
        found = 0
        seen: set[tuple[str, str]] = set()
        for target in self.targets:
            for prefix in self.camera_prefixes(target):
                if (target.bucket, prefix) in seen:
                    continue
                seen.add((target.bucket, prefix))
                found += len(self.scan(target.bucket, prefix))
        return found
