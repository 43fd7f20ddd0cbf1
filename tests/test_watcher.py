"""The watcher over a real S3 endpoint (moto server, HTTP)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestrator.domain.layout import upload_key
from orchestrator.service import open_runtime
from orchestrator.settings import Settings
from tests.conftest import seed_objects

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def _put(runtime, key: str, body: bytes = b"clip") -> None:  # type: ignore[no-untyped-def]
    runtime.s3.client.put_object(Bucket=runtime.settings.s3.ingest_bucket, Key=key, Body=body)


def test_new_uploads_become_clips_once(settings: Settings) -> None:
    with open_runtime(settings) as runtime:
        _put(runtime, upload_key("acme", "door", T0))
        _put(runtime, upload_key("acme", "yard", T0))
        _put(runtime, "acme/door/2026/03/01/notes.txt")  # no pipeline wants it
        _put(runtime, "loose.mp4")  # outside the tenant/camera layout
        assert runtime.watcher.tick() == 2
        assert runtime.watcher.tick() == 0
        clip = runtime.store.find_clip(upload_key("acme", "door", T0))
        assert (clip.tenant, clip.camera, clip.recorded_at) == ("acme", "door", T0)


def test_a_reupload_with_new_content_is_a_new_clip(settings: Settings) -> None:
    with open_runtime(settings) as runtime:
        key = upload_key("acme", "door", T0)
        _put(runtime, key, b"first")
        assert runtime.watcher.tick() == 1
        _put(runtime, key, b"first")  # the same bytes again: the same clip
        assert runtime.watcher.tick() == 0
        _put(runtime, key, b"second")
        assert runtime.watcher.tick() == 1


def test_a_clip_uploaded_late_within_the_lookback_is_found(settings: Settings) -> None:
    with open_runtime(settings) as runtime:
        _put(runtime, upload_key("acme", "door", T0))
        runtime.watcher.tick()
        # A camera back online uploads a clip recorded two minutes earlier.
        _put(runtime, upload_key("acme", "door", T0 - timedelta(minutes=2)))
        assert runtime.watcher.tick() == 1


def _requests_for_a_tick(settings: Settings, old_clips: int) -> int:
    with open_runtime(settings) as runtime:
        bucket = settings.s3.ingest_bucket
        seed_objects(
            bucket,
            [upload_key("acme", "door", T0 - timedelta(minutes=i)) for i in range(old_clips)],
        )
        runtime.watcher.tick()  # catches up once with what is there
        for i in range(3):
            _put(runtime, upload_key("acme", "door", T0 + timedelta(minutes=1, seconds=i)))
        calls: list[str] = []
        runtime.s3.client.meta.events.register(
            "before-send.s3", lambda request, **_: calls.append(request.url)
        )
        assert runtime.watcher.tick() == 3
        return len(calls)


def test_a_tick_costs_the_same_over_10_or_5000_old_clips(settings: Settings) -> None:
    small = _requests_for_a_tick(settings, 10)
    big_settings = settings.model_copy(
        update={
            "s3": settings.s3.model_copy(
                update={"ingest_bucket": "big-" + settings.s3.ingest_bucket}
            )
        }
    )
    big = _requests_for_a_tick(big_settings, 5000)
    assert small == big, (small, big)
    assert small <= 4  # tenants, cameras, the camera's new keys (+ nothing else)
