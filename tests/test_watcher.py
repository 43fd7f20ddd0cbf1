"""Discovery over a real S3 endpoint with real SQS notifications (moto server, HTTP).

Uploads are made the way cameras really make them: backlogs dated hours or days back,
a clock that jumped years ahead, stray files, keys outside the date layout.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote_plus

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.domain.layout import upload_key
from orchestrator.errors import StorageError
from orchestrator.service import Runtime, open_runtime
from orchestrator.settings import Settings
from tests.conftest import seed_objects

NOW = datetime.now(UTC).replace(microsecond=0)


def _put(runtime: Runtime, key: str, body: bytes = b"clip", bucket: str | None = None) -> None:
    runtime.s3.client.put_object(
        Bucket=bucket or runtime.settings.s3.ingest_bucket, Key=key, Body=body
    )


def _with_events(settings: Settings) -> Settings:
    queue = f"events-{uuid.uuid4().hex[:8]}"
    return settings.model_copy(
        update={
            "watcher": settings.watcher.model_copy(
                update={"queue": queue, "configure_notifications": True, "wait_seconds": 0}
            )
        }
    )


def _known_keys(runtime: Runtime) -> set[str]:
    return {clip.key for clip in _all_clips(runtime)}


def _all_clips(runtime: Runtime) -> list:  # type: ignore[type-arg]
    from sqlmodel import select

    from orchestrator.store import Clip

    with runtime.store.session() as session:
        return list(session.exec(select(Clip)).all())


CAMERA_UPLOADS = [
    upload_key("acme", "door", NOW),
    # a camera back from an hour offline uploads its backlog
    upload_key("acme", "door", NOW - timedelta(hours=1)),
    upload_key("acme", "door", NOW - timedelta(hours=1, seconds=-30)),
    # ... or from a week offline
    upload_key("acme", "yard", NOW - timedelta(days=7)),
    # a clock that jumped years ahead
    upload_key("acme", "gate", NOW + timedelta(days=3 * 365)),
    # and that camera's later, correctly dated clips
    upload_key("acme", "gate", NOW + timedelta(seconds=5)),
    # a key outside the date layout: processed at its upload time
    "acme/door/manual export.mp4",
]


@pytest.mark.parametrize("path", ["sweep", "event"])
def test_clips_real_cameras_upload_are_all_found(settings: Settings, path: str) -> None:
    if path == "event":
        settings = _with_events(settings)
    with open_runtime(settings) as runtime:
        _put(runtime, upload_key("acme", "gate", NOW))
        runtime.watcher.tick()
        # Stray files under camera prefixes, which used to hide later clips.
        _put(runtime, "acme/gate/README.txt")
        _put(runtime, "acme/door/debug.log")
        for key in CAMERA_UPLOADS:
            _put(runtime, key)
        found = runtime.watcher.drain(0).new if path == "event" else runtime.watcher.sweep().new
        assert found == len(CAMERA_UPLOADS)
        assert set(CAMERA_UPLOADS) <= _known_keys(runtime)
        assert runtime.watcher.tick() == 0  # nothing twice
        odd = runtime.store.find_clip("acme/door/manual export.mp4")
        assert odd.recorded_at is not None  # its upload time
        assert odd.discovered_by == path


def test_a_reupload_with_new_content_is_a_new_clip(settings: Settings) -> None:
    with open_runtime(settings) as runtime:
        key = upload_key("acme", "door", NOW)
        _put(runtime, key, b"first")
        assert runtime.watcher.tick() == 1
        _put(runtime, key, b"first")  # the same bytes again: the same clip
        assert runtime.watcher.tick() == 0
        _put(runtime, key, b"second")
        assert runtime.watcher.tick() == 1


def test_a_key_without_tenant_and_camera_is_reported_not_dropped(settings: Settings) -> None:
    with open_runtime(settings) as runtime:
        _put(runtime, "loose.mp4")
        _put(runtime, "acme/loose.mp4")
        assert runtime.watcher.tick() == 0
        rejected = {row.key: row.reason for row in runtime.store.rejected_objects()}
        assert set(rejected) == {"loose.mp4", "acme/loose.mp4"}
        assert "<tenant>/<camera>/" in rejected["loose.mp4"]
        runtime.watcher.tick()
        assert len(runtime.store.rejected_objects()) == 2  # reported once
    result = CliRunner().invoke(
        app, ["rejected", "--json"], env={"CAMFLOW_STORE__URL": settings.store_url}
    )
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert {item["uri"] for item in listed} == {
        f"s3://{settings.s3.ingest_bucket}/loose.mp4",
        f"s3://{settings.s3.ingest_bucket}/acme/loose.mp4",
    }


def test_camflow_outputs_in_a_shared_bucket_are_not_clips(settings: Settings) -> None:
    shared = settings.model_copy(
        update={"s3": settings.s3.model_copy(update={"results_bucket": settings.s3.ingest_bucket})}
    )
    with open_runtime(_with_events(shared)) as runtime:
        _put(runtime, upload_key("acme", "door", NOW))
        assert runtime.watcher.tick() == 1
        clip = _all_clips(runtime)[0]
        _put(runtime, f"acme/door/{clip.id}/privacy/anonymize/anonymized.mp4")
        assert runtime.watcher.tick() == 0
        assert runtime.store.rejected_objects() == []


def test_notifications_as_aws_sends_them(settings: Settings) -> None:
    with open_runtime(_with_events(settings)) as runtime:
        queue = runtime.watcher.queue
        assert queue is not None
        # The first message S3 sends is a test event; keys arrive URL-encoded.
        for key in ["acme/door/2026/01/02/030405 front gate.mp4", "acme/tür/ß/café.mp4"]:
            _put(runtime, key)
        assert runtime.watcher.drain(0).new == 2
        assert {c.key for c in _all_clips(runtime)} == {
            "acme/door/2026/01/02/030405 front gate.mp4",
            "acme/tür/ß/café.mp4",
        }
        # Delivery is at least once: a duplicate changes nothing.
        cafe = next(c for c in _all_clips(runtime) if c.key.endswith("café.mp4"))
        record = {
            "Records": [
                {
                    "eventName": "ObjectCreated:Put",
                    "eventTime": "2026-01-02T03:04:05.000Z",
                    "s3": {
                        "bucket": {"name": cafe.bucket},
                        "object": {"key": quote_plus(cafe.key), "size": 4, "eTag": cafe.etag},
                    },
                }
            ]
        }
        queue.client.send_message(QueueUrl=queue.url, MessageBody=json.dumps(record))
        test_event = json.dumps({"Event": "s3:TestEvent"})
        queue.client.send_message(QueueUrl=queue.url, MessageBody=test_event)
        queue.client.send_message(QueueUrl=queue.url, MessageBody="not json at all")
        assert runtime.watcher.tick() == 0
        assert len(_all_clips(runtime)) == 2
        # Every message handled is deleted.
        assert queue.receive(0) == []


def test_a_message_is_deleted_only_after_its_clip_is_recorded(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_runtime(_with_events(settings)) as runtime:
        queue = runtime.watcher.queue
        assert queue is not None
        queue.client.set_queue_attributes(QueueUrl=queue.url, Attributes={"VisibilityTimeout": "0"})
        _put(runtime, upload_key("acme", "door", NOW))
        store = runtime.store
        original = store.record_clips

        def store_down(*_args: object, **_kwargs: object) -> list:  # type: ignore[type-arg]
            raise StorageError("the database is away")

        monkeypatch.setattr(store, "record_clips", store_down)
        with pytest.raises(StorageError):
            runtime.watcher.drain(0)
        monkeypatch.setattr(store, "record_clips", original)
        # The message came back: the clip is found from it, not lost.
        assert runtime.watcher.drain(0).new == 1


def test_a_sweep_spends_its_page_budget_then_resumes(settings: Settings) -> None:
    small_pages = settings.model_copy(
        update={
            "watcher": settings.watcher.model_copy(update={"page_size": 10, "reconcile_pages": 2})
        }
    )
    with open_runtime(small_pages) as runtime:
        keys = [upload_key("acme", f"cam{i:02d}", NOW) for i in range(45)]
        seed_objects(settings.s3.ingest_bucket, keys)
        reports = [runtime.watcher.sweep() for _ in range(3)]
        assert [r.requests for r in reports] == [2, 2, 1]
        assert [r.new for r in reports] == [20, 20, 5]
        assert [r.complete for r in reports] == [False, False, True]
        # A key a camera adds behind the cursor is found by the next full pass.
        _put(runtime, upload_key("acme", "cam00", NOW - timedelta(days=1)))
        assert sum(runtime.watcher.sweep().new for _ in range(3)) == 1


def _count_requests(runtime: Runtime) -> list[str]:
    calls: list[str] = []
    runtime.s3.client.meta.events.register(
        "before-send.s3", lambda request, **_: calls.append("s3 " + request.url)
    )
    if runtime.watcher.queue is not None:
        runtime.watcher.queue.client.meta.events.register(
            "before-send.sqs", lambda request, **_: calls.append("sqs " + request.url)
        )
    return calls


def test_an_idle_event_poll_costs_one_request_over_10000_cameras(settings: Settings) -> None:
    seed_objects(
        settings.s3.ingest_bucket,
        [upload_key(f"t{i % 50}", f"cam{i}", NOW) for i in range(10_000)],
    )
    with open_runtime(_with_events(settings)) as runtime:
        calls = _count_requests(runtime)
        assert runtime.watcher.sweep().new == 10_000
        sweep_requests = len(calls)
        runtime.watcher.drain(0)  # S3's s3:TestEvent, sent when notifications were set up
        calls.clear()
        assert runtime.watcher.drain(0).new == 0
        assert len(calls) == 1, calls  # one SQS receive, whatever the number of cameras
        calls.clear()
        report = runtime.watcher.sweep()
        # A pass lists objects, not cameras: ceil(10000 / 1000) pages.
        assert report.requests == len(calls) == sweep_requests == 10


def test_a_big_first_target_never_starves_the_others(settings: Settings) -> None:
    from orchestrator.domain.pipeline import Trigger
    from orchestrator.watcher import Watcher

    bucket = settings.s3.ingest_bucket
    # Exactly a whole number of page budgets under the first prefix.
    seed_objects(bucket, [upload_key("aaa", f"cam{i:02d}", NOW) for i in range(40)])
    seed_objects(bucket, [upload_key("bbb", "door", NOW)])
    with open_runtime(settings) as runtime:
        triggers = [Trigger(prefix="aaa/"), Trigger(prefix="bbb/")]
        watcher = Watcher(
            runtime.store, runtime.s3, triggers, bucket, "results", page_size=10, pages_per_pass=2
        )
        found = sum(watcher.sweep().new for _ in range(3))
        assert found == 41
        assert "bbb/door/" in " ".join(_known_keys(runtime))
