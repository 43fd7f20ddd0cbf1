"""``camflow process``: one pipeline over local files, through the same engine."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.domain.catalog import Pipeline
from orchestrator.domain.discovery import FoundObject
from orchestrator.domain.layout import upload_key
from orchestrator.errors import StorageError
from orchestrator.service import Runtime, drive, open_runtime
from orchestrator.settings import Settings
from orchestrator.storage import S3Gateway
from orchestrator.store import Clip, Run
from orchestrator.store.models import AttemptState, RunStatus
from orchestrator.watcher import to_clip


def one_shot_owner() -> str:
    return f"oneshot-{uuid.uuid4().hex[:12]}"


def _safe_stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)[:80] or "clip"


def save_outputs(s3: S3Gateway, result: dict[str, Any], folder: Path) -> Path:
    """Writes result.json and downloads every artifact the result names into ``folder``:
    the embedded S3 forgets them when camflow exits."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps(result, indent=2))
    artifacts = result.get("artifacts") or {}
    uris = [item["uri"] for item in artifacts.get("thumbnails", [])]
    if artifacts.get("anonymized_video"):
        uris.append(artifacts["anonymized_video"])
    for uri in uris:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        relative = key.rsplit("/", 2)[-2:] if "/thumbnails/" in key else key.rsplit("/", 1)[-1:]
        s3.download_file(bucket, key, folder.joinpath(*relative))
    return folder


def run_files(
    runtime: Runtime,
    pipeline: Pipeline,
    files: Sequence[Path],
    tenant: str,
    camera: str,
    timeout: float,
    on_progress: Callable[[int], None] | None = None,
) -> list[tuple[str, Run]]:
    """Uploads ``files`` and drives ``pipeline`` on each until done: (file name, run)."""
    bucket = pipeline.spec.trigger.bucket or runtime.settings.s3.ingest_bucket
    now = datetime.now(UTC)
    clips: list[Clip] = []
    for n, path in enumerate(files):
        suffix = path.suffix.lower() or ".bin"
        key = upload_key(tenant, camera, now, suffix, n + 1)
        key = key.removesuffix(suffix) + f"-{_safe_stem(path)}{suffix}"
        # Recorded, planned and owned by us *before* the upload exists: a `serve` on
        # the same store that hears of it at once finds it known and leaves it to us.
        clip = to_clip(FoundObject(bucket, key, _md5(path), path.stat().st_size, now), "upload")
        if clip is None:  # cannot happen: the key has tenant and camera
            raise ValueError(f"bad key {key}")
        clip.planned = True
        clips.append(clip)
    # In one transaction each, not one per file: the engine's clock starts with them.
    runtime.store.record_clips(clips)
    runs = runtime.reconciler.plan_runs(clips, pipeline)
    run_ids = [run.id for run in runs]
    try:
        _upload(runtime.s3, list(zip(files, clips, strict=True)))
        drive(
            runtime,
            run_ids,
            timeout,
            on_tick=(
                (lambda _r, pending: on_progress(len(run_ids) - pending)) if on_progress else None
            ),
        )
    except BaseException as exc:
        _give_up(runtime, run_ids, exc)
        raise
    runs_by_file = [(path.name, run.id) for path, run in zip(files, runs, strict=True)]
    return [(name, runtime.store.get_run(rid)) for name, rid in runs_by_file]


T = TypeVar("T")

#: Transfers at once: S3 answers each request in a round trip of its own.
TRANSFER_THREADS = 8


def _upload(s3: S3Gateway, uploads: list[tuple[Path, Clip]]) -> None:
    """PUTs each file as its clip's object, several at once, checking that S3 gave it
    the ETag the clip was recorded with. The first failure stops the uploads not begun
    yet: each would be one more object the command then gives up on."""

    def put(upload: tuple[Path, Clip]) -> None:
        path, clip = upload
        etag = s3.put_file(path, clip.bucket, clip.key).etag
        if etag != clip.etag:
            # Under another ETag it is another clip to a `serve` watching the bucket:
            # the key is ours alone, so it goes rather than being run behind our back.
            with contextlib.suppress(StorageError):
                s3.delete(clip.bucket, clip.key)
            raise StorageError(
                f"S3 gave s3://{clip.bucket}/{clip.key} the ETag {etag}, not the MD5 of its bytes "
                "(server-side encryption with KMS?): `camflow process` needs an S3 whose "
                "single-PUT ETags are MD5s; upload to the watched bucket instead"
            )

    _side_by_side(put, uploads)


def _side_by_side(work: Callable[[T], None], items: Sequence[T]) -> None:
    """``work`` on each item, TRANSFER_THREADS at once. The first failure (or Ctrl-C)
    drops the items not begun and is raised once those in flight end."""
    pool = ThreadPoolExecutor(max_workers=min(TRANSFER_THREADS, len(items) or 1))
    try:
        for future in as_completed([pool.submit(work, item) for item in items]):
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _give_up(runtime: Runtime, run_ids: list[str], why: BaseException) -> None:
    """Ends what this command started and will no longer follow (Ctrl-C, its timeout):
    its stages are stopped and its runs failed, saying why, rather than left active
    with no one to drive them."""
    reason = f"camflow process stopped before the run finished ({type(why).__name__}: {why})"
    now = datetime.now(UTC)
    for rid in run_ids:
        try:
            run = runtime.store.get_run(rid)
            if RunStatus(run.status).terminal or run.owner != runtime.reconciler.owner:
                continue
            handles = [
                a.handle
                for a in runtime.store.attempts_of_run(rid)
                if a.handle and a.state in (AttemptState.PENDING, AttemptState.RUNNING)
            ]
            if handles:
                runtime.executor.cancel(handles)
            runtime.store.finish_run(rid, RunStatus.FAILED, reason, None, None, now)
        except Exception:  # best effort on the way out; the error that stopped us wins
            continue


def process_files(
    settings: Settings,
    pipeline_name: str,
    files: Sequence[Path],
    tenant: str,
    camera: str,
    timeout: float,
    on_progress: Callable[[int], None] | None = None,
    out_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Uploads ``files``, runs ``pipeline_name`` on each, returns one result per file
    (as in result.json) with ``clip`` set to the file's name. With ``out_dir``, each
    result and its artifacts are saved under ``out_dir/<clip-id>/`` (``saved_to``)."""
    with open_runtime(settings) as runtime:
        runtime.reconciler.owner = one_shot_owner()
        pipeline = runtime.catalog.pipeline(pipeline_name)
        done = run_files(runtime, pipeline, files, tenant, camera, timeout, on_progress)
        results = [
            {"clip": name, **(run.result or {"status": str(run.status)})} for name, run in done
        ]
        if out_dir is not None:
            saved = [
                (result, run.result)
                for result, (_, run) in zip(results, done, strict=True)
                if run.result
            ]

            def save(item: tuple[dict[str, Any], dict[str, Any]]) -> None:
                result, stored = item
                folder = save_outputs(runtime.s3, stored, out_dir / stored["clip_id"])
                result["saved_to"] = str(folder)

            # Side by side, as the uploads: each artifact is a round trip of its own.
            _side_by_side(save, saved)
        return results
