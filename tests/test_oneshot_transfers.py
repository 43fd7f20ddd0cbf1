"""`camflow process` uploads its files itself, several at once, and saves what the runs
made: what happens when S3 does not give an upload the ETag its clip was recorded with
(SSE-KMS does that), and when a download breaks off midway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ResponseStreamingError

from orchestrator.cli import oneshot
from orchestrator.embedded_s3 import EmbeddedS3
from orchestrator.errors import StorageError
from orchestrator.service import open_runtime
from orchestrator.settings import Settings
from orchestrator.storage import DOWNLOAD_TRIES, ObjectInfo, S3Gateway
from orchestrator.store.models import RunStatus


def _files(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    paths = [folder / f"clip{n}.mp4" for n in range(count)]
    for n, path in enumerate(paths):
        path.write_bytes(f"not a video {n}".encode())
    return paths


def test_an_upload_under_another_etag_is_removed_and_stops_the_rest(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One upload at a time, so that which uploads began is certain.
    monkeypatch.setattr(oneshot, "TRANSFER_THREADS", 1)
    files = _files(tmp_path / "clips", 8)
    with open_runtime(settings) as runtime:
        real_put = runtime.s3.put_file
        put: list[str] = []

        def kms_put(path: Path, bucket: str, key: str) -> ObjectInfo:
            # The object is really written; S3 answers the first with a non-MD5 ETag,
            # as with KMS.
            answer = real_put(path, bucket, key)
            put.append(key)
            etag = answer.etag if len(put) > 1 else "kms-" + answer.etag
            return ObjectInfo(key, etag, answer.size, None)

        monkeypatch.setattr(runtime.s3, "put_file", kms_put)
        pipeline = runtime.catalog.pipeline("faces")
        with pytest.raises(StorageError, match="not the MD5 of its bytes"):
            oneshot.run_files(runtime, pipeline, files, "t", "c", 60)

        # The first upload failed the check; the one in flight then ended, and those
        # queued never began.
        assert len(put) < len(files)
        listed: list[Any] = runtime.s3.client.list_objects_v2(Bucket=settings.s3.ingest_bucket).get(
            "Contents", []
        )
        # Under its other ETag a watching `serve` would take it for a new clip: removed.
        # The others are known clips with their ETags, given up with their runs.
        assert sorted(o["Key"] for o in listed) == sorted(put[1:])
        runs = [run for run, _clip in runtime.store.list_runs()]
        assert len(runs) == len(files)
        assert {run.status for run in runs} == {RunStatus.FAILED}
        assert all("not the MD5" in (run.error or "") for run in runs)


class _BreaksOff:
    """A GetObject body whose connection drops after its first bytes."""

    def __init__(self, body: Any) -> None:
        self.body = body

    def iter_chunks(self, size: int) -> Any:
        yield self.body.read(10)
        raise ResponseStreamingError(error="connection reset by peer")

    def close(self) -> None:
        self.body.close()


@pytest.mark.parametrize("breaks", [1, DOWNLOAD_TRIES])
def test_a_download_that_breaks_off_is_fetched_again_or_left_unwritten(
    s3_server: EmbeddedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, breaks: int
) -> None:
    s3 = S3Gateway(s3_server.access("us-east-1"))
    s3.ensure_bucket("transfers")
    data = bytes(range(256)) * 400
    s3.client.put_object(Bucket="transfers", Key="t/thumb.jpg", Body=data)
    real_get = s3.client.get_object
    gets = []

    def get_object(**kwargs: Any) -> Any:
        reply = real_get(**kwargs)
        gets.append(kwargs["Key"])
        if len(gets) <= breaks:
            reply["Body"] = _BreaksOff(reply["Body"])
        return reply

    monkeypatch.setattr(s3.client, "get_object", get_object)
    target = tmp_path / "out" / "thumb.jpg"
    if breaks < DOWNLOAD_TRIES:
        s3.download_file("transfers", "t/thumb.jpg", target)
        assert target.read_bytes() == data
        assert len(gets) == breaks + 1
    else:
        with pytest.raises(StorageError, match="download failed"):
            s3.download_file("transfers", "t/thumb.jpg", target)
        assert len(gets) == DOWNLOAD_TRIES
        assert not target.exists()
    # Whole or not at all: no partial file is left beside it.
    assert [p.name for p in target.parent.iterdir()] == ([target.name] if target.exists() else [])
