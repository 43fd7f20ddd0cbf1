"""`camflow process` uploads its files itself, several at once: what happens when S3
does not give an upload the ETag its clip was recorded with (SSE-KMS does that)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import oneshot
from orchestrator.errors import StorageError
from orchestrator.service import open_runtime
from orchestrator.settings import Settings
from orchestrator.storage import ObjectInfo
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
    monkeypatch.setattr(oneshot, "UPLOAD_THREADS", 1)
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
