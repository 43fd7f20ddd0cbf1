"""What the API tests put in a store: tenants' clips with finished runs."""

from __future__ import annotations

from datetime import UTC, datetime

from orchestrator.domain.layout import clip_id, upload_key
from orchestrator.service import Runtime
from orchestrator.store import Clip, Run
from orchestrator.store.models import RunStatus, utcnow

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def seed_clip(runtime: Runtime, tenant: str, camera: str) -> Clip:
    """A clip with a finished run whose result names a thumbnail in S3."""
    bucket, results = runtime.settings.s3.ingest_bucket, runtime.settings.s3.results_bucket
    key = upload_key(tenant, camera, T0)
    runtime.s3.client.put_object(Bucket=bucket, Key=key, Body=b"clip")
    clip = Clip(
        id=clip_id(bucket, key, tenant),
        bucket=bucket,
        key=key,
        etag=tenant,
        size=4,
        tenant=tenant,
        camera=camera,
    )
    runtime.store.record_clips([clip])
    # Where the faces pipeline's thumbnails stage puts them: the run's own results.
    thumb = f"{tenant}/{camera}/{clip.id}/faces/thumbnails/0.jpg"
    runtime.s3.client.put_object(Bucket=results, Key=thumb, Body=b"jpeg")
    run = Run(id=f"r-{tenant[:8]:0<8}{camera[:8]:0<8}"[:18], clip_id=clip.id, pipeline="faces")
    runtime.store.plan(clip.id, [run])
    runtime.store.finish_run(
        run.id,
        RunStatus.SUCCEEDED,
        None,
        {
            "clip_id": clip.id,
            "status": "succeeded",
            "frames": [],
            "artifacts": {"thumbnails": [{"t": 0.0, "uri": f"s3://{results}/{thumb}"}]},
        },
        None,
        utcnow(),
    )
    return clip
