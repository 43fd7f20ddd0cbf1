"""Helpers for writing a camflow stage: read the contract, talk to S3, report.

A stage's ``main(ctx)`` returns ``StageReport``; ``run_stage`` writes
``_manifest.json`` last and maps errors to the contract's exit codes::

    from algorithms.sdk import StageContext, StageReport, run_stage

    def main(ctx: StageContext) -> StageReport:
        ...
        return StageReport(outputs={"result": "result.json"}, metrics={"frames": 10})

    if __name__ == "__main__":
        run_stage(main)
"""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from algorithms import contract

log = logging.getLogger("camflow.stage")


class BadInput(Exception):
    """The input can never be processed: the stage exits 2 and is not retried.

    The message is one sentence that names the problem and what to do about it.
    """


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"not an s3:// URI: {uri!r}")
        return cls(parsed.netloc, parsed.path.lstrip("/"))

    def join(self, *parts: str) -> S3Uri:
        key = self.key
        for part in parts:
            key = f"{key.rstrip('/')}/{part.lstrip('/')}" if key else part
        return S3Uri(self.bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def s3_client(environ: Mapping[str, str] | None = None) -> Any:
    """A boto3 S3 client configured from the standard AWS variables: the process's, or
    the credentials a batch item carries (each group of clips a warm process takes comes
    with credentials for those clips only)."""
    import boto3
    from botocore.config import Config

    keys: dict[str, Any] = {}
    if environ is not None and environ.get("AWS_ACCESS_KEY_ID"):
        keys = {
            "aws_access_key_id": environ["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": environ.get("AWS_SECRET_ACCESS_KEY"),
            "aws_session_token": environ.get("AWS_SESSION_TOKEN"),
        }
    # Path-style addressing works with every S3 implementation (moto, MinIO, AWS).
    return boto3.client(
        "s3",
        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard"}),
        **keys,
    )


def prewarm_s3() -> None:
    """Loads botocore's S3 model into the default session (50-80 ms of CPU that the
    first client pays otherwise), before any clip: a spare process does it while idle.
    With placeholder keys, so that no credentials are looked for or kept."""
    import boto3

    boto3.client("s3", aws_access_key_id="-", aws_secret_access_key="-", region_name="us-east-1")


class _Clients:
    """One client per set of credentials a batch has seen; the last few only, since a
    warm process's earlier credentials are revoked once their clips are done."""

    KEEP = 4

    def __init__(self) -> None:
        self._by_key: dict[str | None, Any] = {}
        # Clips on threads of one process ask at once (boto3's clients are thread-safe).
        self._lock = threading.Lock()

    def for_env(self, environ: Mapping[str, str]) -> Any:
        key = environ.get("AWS_ACCESS_KEY_ID")
        with self._lock:
            client = self._by_key.pop(key, None) or s3_client(environ)
            self._by_key[key] = client  # most recent last
            while len(self._by_key) > self.KEEP:
                self._by_key.pop(next(iter(self._by_key)))
            return client


class Handoff:
    """Outputs that fused stages pass on within their execution instead of S3 (see
    contract.ENV_KEEP_LOCAL): objects by their S3 address, as bytes, or as decoded
    images (numpy arrays), which the next stage takes as they are, never re-encoded.
    In memory for the stages of one process; in a folder the stages of one pod share
    (CAMFLOW_HANDOFF_DIR), one file per object."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._objects: dict[tuple[str, str], Any] = {}

    def _path(self, uri: S3Uri) -> Path:
        assert self.folder is not None
        path = (self.folder / uri.bucket / uri.key).resolve()
        if not path.is_relative_to(self.folder.resolve()):
            raise ValueError(f"{uri} does not name an object under the hand-off folder")
        return path

    def put(self, uri: S3Uri, value: Any) -> None:
        if self.folder is None:
            self._objects[(uri.bucket, uri.key)] = value
            return
        path = self._path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(value, bytes | bytearray):
            path.write_bytes(value)
        else:  # an image: its raw pixels, as numpy stores them
            import numpy as np

            with path.with_name(path.name + ".npy").open("wb") as handle:
                np.save(handle, value, allow_pickle=False)

    def get(self, uri: S3Uri) -> Any:
        """The object (bytes, or an image), or None if it was not handed over."""
        if self.folder is None:
            return self._objects.get((uri.bucket, uri.key))
        path = self._path(uri)
        if path.is_file():
            return path.read_bytes()
        array = path.with_name(path.name + ".npy")
        if array.is_file():
            import numpy as np

            return np.load(array, allow_pickle=False)
        return None


@dataclass
class StageContext:
    inputs: dict[str, str]
    output: S3Uri
    params: dict[str, Any]
    run_id: str
    stage: str
    accelerator: str
    scratch: Path
    clip: dict[str, Any] = field(default_factory=dict)
    #: Fused: this stage's outputs go to the hand-off, not S3 (see Handoff).
    keep_local: bool = False
    #: CPUs it may keep busy (CAMFLOW_CPUS); 0: not said, use the library's default.
    cpus: int = 0
    #: CPUs the whole process may keep busy: with clips on threads side by side (a
    #: thread_safe batch), every clip's share. Size a pool shared by the process's
    #: clips (a model loaded once) to it: when one clip is left, it gets them all.
    process_cpus: int = 0
    _s3: Any = field(default=None, repr=False)
    _handoff: Handoff | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> StageContext:
        env = os.environ if environ is None else environ
        missing = [
            name
            for name in (contract.ENV_INPUTS, contract.ENV_OUTPUT, contract.ENV_RUN_ID)
            if not env.get(name)
        ]
        if missing:
            raise RuntimeError(
                f"not started by camflow: {', '.join(missing)} not set "
                "(use `camflow algorithms try` or `camflow process` to run a stage)"
            )
        # Per run and stage: stages of one run may run at once, and a batch clears each
        # clip's scratch when it is done.
        scratch = Path(env.get("TMPDIR") or "/tmp") / (
            f"camflow-{env[contract.ENV_RUN_ID]}-{env.get(contract.ENV_STAGE, '')}"
        )
        scratch.mkdir(parents=True, exist_ok=True)
        return cls(
            inputs=json.loads(env[contract.ENV_INPUTS]),
            output=S3Uri.parse(env[contract.ENV_OUTPUT]),
            params=json.loads(env.get(contract.ENV_PARAMS) or "{}"),
            run_id=env[contract.ENV_RUN_ID],
            stage=env.get(contract.ENV_STAGE, ""),
            accelerator=env.get(contract.ENV_ACCELERATOR, "cpu"),
            scratch=scratch,
            clip=json.loads(env.get(contract.ENV_CLIP) or "{}"),
            keep_local=env.get(contract.ENV_KEEP_LOCAL) == "1",
            cpus=int(env.get(contract.ENV_CPUS) or 0),
            # A batch item's environment carries the clip's share; the process's own
            # is the batch's, all its lanes'.
            process_cpus=int(os.environ.get(contract.ENV_CPUS) or env.get(contract.ENV_CPUS) or 0),
            _handoff=(
                Handoff(Path(env[contract.ENV_HANDOFF_DIR]))
                if env.get(contract.ENV_HANDOFF_DIR)
                else None
            ),
        )

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = s3_client()
        return self._s3

    def input(self, name: str) -> S3Uri:
        try:
            return S3Uri.parse(self.inputs[name])
        except KeyError:
            raise RuntimeError(
                f"stage {self.stage!r} needs an input named {name!r}; "
                f"the pipeline gave {sorted(self.inputs)}"
            ) from None

    # --- S3 helpers -------------------------------------------------------------------

    def download(self, uri: S3Uri, dest: Path) -> Path:
        """Downloads ``uri``; the clip itself only if it still has the clip's ETag."""
        from botocore.exceptions import ClientError

        dest.parent.mkdir(parents=True, exist_ok=True)
        request = {"Bucket": uri.bucket, "Key": uri.key}
        is_clip = (uri.bucket, uri.key) == (self.clip.get("bucket"), self.clip.get("key"))
        if is_clip and self.clip.get("etag"):
            # Conditional on the ETag in the same request, so no re-upload can slip in.
            request["IfMatch"] = f'"{self.clip["etag"]}"'
        try:
            body = self.s3.get_object(**request)["Body"]
            with dest.open("wb") as handle:
                shutil.copyfileobj(body, handle, length=1 << 20)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in ("412", "PreconditionFailed"):
                raise BadInput(
                    f"the clip at {uri} was replaced by a newer upload under the same key; "
                    "the newer upload is processed as a clip of its own"
                ) from exc
            if code in ("404", "NoSuchKey"):
                raise BadInput(
                    f"the clip at {uri} no longer exists (deleted after upload); "
                    "upload it again to process it"
                ) from exc
            raise
        return dest

    def get_json(self, uri: S3Uri) -> Any:
        return json.loads(self.get_bytes(uri))

    def _handed(self, uri: S3Uri) -> Any:
        return self._handoff.get(uri) if self._handoff is not None else None

    @property
    def _keeps(self) -> bool:
        return self.keep_local and self._handoff is not None

    def get_bytes(self, uri: S3Uri) -> bytes:
        handed = self._handed(uri)
        if isinstance(handed, bytes | bytearray):
            return bytes(handed)
        if handed is not None:  # an image handed over decoded, read as a file: JPEG
            return _jpeg(handed, 95)
        return self.s3.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read()

    def put_bytes(self, relative: str, data: bytes, content_type: str) -> S3Uri:
        target = self.output.join(relative)
        if self._keeps:
            assert self._handoff is not None
            self._handoff.put(target, data)
            return target
        self.s3.put_object(
            Bucket=target.bucket, Key=target.key, Body=data, ContentType=content_type
        )
        return target

    def put_images(self, items: Iterable[tuple[str, Any]], quality: int = 90) -> int:
        """Writes images (BGR numpy arrays) as JPEG files under the output, or, fused
        with the stages that read them, hands them over as they are (no encoding)."""
        if self._keeps:
            assert self._handoff is not None
            count = 0
            for relative, image in items:
                self._handoff.put(self.output.join(relative), image)
                count += 1
            return count
        return self.put_many(
            (relative, _jpeg(image, quality), "image/jpeg") for relative, image in items
        )

    def get_images(self, uris: Iterable[S3Uri]) -> list[Any]:
        """The images at ``uris`` as BGR numpy arrays (None where a file is not an
        image): handed over by a fused stage before this one, or read from S3."""
        import cv2
        import numpy as np

        uris = list(uris)
        images: list[Any] = [self._handed(uri) for uri in uris]
        missing = [n for n, image in enumerate(images) if image is None]
        for n, blob in zip(missing, self.get_many(uris[n] for n in missing), strict=True):
            images[n] = blob
        return [
            cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
            if isinstance(image, bytes | bytearray)
            else image
            for image in images
        ]

    def put_json(self, relative: str, payload: Any) -> S3Uri:
        data = json.dumps(payload, separators=(",", ":")).encode()
        return self.put_bytes(relative, data, "application/json")

    def put_many(self, items: Iterable[tuple[str, bytes, str]], workers: int = 8) -> int:
        """Uploads many small objects in parallel; one PUT each costs a round trip."""
        if self._keeps:
            return sum(1 for item in items if self.put_bytes(*item))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            done = list(pool.map(_in_this_clip(lambda item: self.put_bytes(*item)), items))
        return len(done)

    def get_many(self, uris: Iterable[S3Uri], workers: int = 8) -> list[bytes]:
        if self._handoff is not None:
            uris = list(uris)
            if all(self._handed(uri) is not None for uri in uris):
                return [self.get_bytes(uri) for uri in uris]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(_in_this_clip(self.get_bytes), uris))


def _jpeg(image: Any, quality: int) -> bytes:
    import cv2

    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("could not encode an image as JPEG")
    return encoded.tobytes()


@dataclass
class StageReport:
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


Main = Callable[[StageContext], StageReport]


def _write_manifest(ctx: StageContext, report: StageReport, started: float) -> dict[str, Any]:
    report.metrics.setdefault("seconds", round(time.monotonic() - started, 3))
    manifest = {
        "stage": ctx.stage,
        "run_id": ctx.run_id,
        "accelerator": ctx.accelerator,
        "outputs": report.outputs,
        "metrics": report.metrics,
    }
    ctx.put_json(contract.MANIFEST_NAME, manifest)
    return manifest


def _one_line(text: str) -> str:
    return " ".join(text.split())[:1000]


def run_stage(main: Main) -> None:
    """Runs ``main`` under the stage contract and exits with the contract's code: once
    for one clip, or once per clip of a batch (CAMFLOW_BATCH_FILE / CAMFLOW_BATCH) in
    this one process, so that imports and models (cache them, e.g. functools.cache)
    are paid once per batch rather than once per clip."""
    logging.basicConfig(
        level=os.environ.get("CAMFLOW_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    items = batch_items(os.environ)
    if items is not None:
        index = os.environ.get(contract.ENV_BATCH_INDEX)
        # Items with reports are a local batch: a JOB_COMPLETION_INDEX inherited from
        # wherever the orchestrator runs must not cut it to one clip.
        if index is None or any(item.get("report") for item in items):
            sys.exit(_run_batch(main, items))
        # An Indexed Job's pod: one clip of the batch, as if it had been given alone,
        # so that this process's exit code is that clip's outcome.
        os.environ.update(batch_item(items, index)["env"])
        os.environ.pop(contract.ENV_BATCH, None)
    started = time.monotonic()
    try:
        ctx = StageContext.from_env()
        manifest = _write_manifest(ctx, main(ctx), started)
        if os.environ.get(contract.ENV_MANIFEST_COPY):
            # Written to S3 first: the copy only spares camflow reading it back.
            _write_report(os.environ[contract.ENV_MANIFEST_COPY], manifest)
        if os.environ.get(contract.ENV_MANIFEST_MESSAGE):
            # In place: a termination-message file is mounted there, not replaceable.
            Path(os.environ[contract.ENV_MANIFEST_MESSAGE]).write_text(
                json.dumps(manifest, separators=(",", ":"))
            )
    except BadInput as exc:
        # The contract: the reason is the last line of stderr, on one line.
        print(_one_line(str(exc)), file=sys.stderr, flush=True)
        sys.exit(contract.EXIT_BAD_INPUT)
    except Exception as exc:
        traceback.print_exc()
        print(f"{type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(contract.EXIT_OK)


# --- the batch form -----------------------------------------------------------------------


def batch_items(environ: Mapping[str, str], member: str = "env") -> list[dict[str, Any]] | None:
    """The batch this process was given, or None for the single-clip contract."""
    if environ.get(contract.ENV_BATCH_FILE):
        raw = Path(environ[contract.ENV_BATCH_FILE]).read_text()
    elif environ.get(contract.ENV_BATCH):
        raw = environ[contract.ENV_BATCH]
    else:
        return None
    items = json.loads(raw)
    shape = dict if member == "env" else list
    if not isinstance(items, list) or not all(
        isinstance(item, dict) and isinstance(item.get(member), shape) for item in items
    ):
        raise SystemExit(f"{contract.ENV_BATCH}: not a list of {{{member!r}: ...}} items")
    return items


def batch_item(items: list[dict[str, Any]], index: str) -> dict[str, Any]:
    """The item ``index`` (JOB_COMPLETION_INDEX) names."""
    if not index.isdecimal() or int(index) >= len(items):
        raise SystemExit(
            f"{contract.ENV_BATCH_INDEX}={index!r}: not an item of this batch of {len(items)}"
        )
    return items[int(index)]


class _LastLine:
    """Passes stderr through, copies it into the clip's own log when the item names
    one, and remembers its last non-empty line: a clip's reason when its code printed
    one and then exited (the contract's reason, per clip)."""

    def __init__(self, stream: Any, copy: Any = None) -> None:
        self.stream, self.copy, self.last = stream, copy, ""

    def write(self, text: str) -> int:
        lines = [line for line in text.splitlines() if line.strip()]
        if lines:
            self.last = lines[-1]
        if self.copy is not None:
            self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        if self.copy is not None:
            self.copy.flush()
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class _ThreadStderr:
    """sys.stderr in a batch process: each thread's writes go to the clip that thread
    runs (its _LastLine), the rest to the process's stderr. Clips side by side on
    threads (thread_safe stages) each keep their own log and their own last line."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._local = threading.local()

    @property
    def tee(self) -> _LastLine | None:
        return getattr(self._local, "tee", None)

    @tee.setter
    def tee(self, tee: _LastLine | None) -> None:
        self._local.tee = tee

    def write(self, text: str) -> int:
        return (self.tee or self.stream).write(text)

    def flush(self) -> None:
        (self.tee or self.stream).flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


_ROUTING = threading.Lock()


def _stderr_router() -> _ThreadStderr:
    """Installs the router as sys.stderr and as the stream of the log handlers that
    wrote to the process's stderr, once."""
    with _ROUTING:
        router = sys.stderr
        if isinstance(router, _ThreadStderr):
            return router
        router = _ThreadStderr(sys.__stderr__)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.__stderr__:
                handler.setStream(router)  # type: ignore[arg-type]
        sys.stderr = router  # type: ignore[assignment]
        return router


def _in_this_clip(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function``, to run on a pool's thread, writing to the log of the clip that
    this thread runs."""
    router = sys.stderr if isinstance(sys.stderr, _ThreadStderr) else None
    tee = router.tee if router is not None else None
    if router is None or tee is None:
        return function

    def in_clip(*args: Any) -> Any:
        router.tee = tee
        try:
            return function(*args)
        finally:
            router.tee = None

    return in_clip


@contextlib.contextmanager
def _clip_stderr(log_path: str | None) -> Iterator[_LastLine]:
    """sys.stderr, and the log handlers that write to it, for one clip of a batch, in
    the thread that runs it."""
    copy = open(log_path, "a", encoding="utf-8") if log_path else None  # noqa: SIM115
    tee = _LastLine(sys.__stderr__, copy)
    router = _stderr_router()
    router.tee = tee
    try:
        yield tee
    finally:
        router.tee = None
        if copy is not None:
            copy.close()


Outcome = tuple[int, str | None, dict[str, Any] | None]  # exit code, reason, manifest


def _run_item(
    main: Main,
    environ: Mapping[str, str],
    s3: Any,
    log_path: str | None = None,
    name: str = "",
    handoff: Handoff | None = None,
) -> Outcome:
    with _clip_stderr(log_path) as errors:
        print(
            f"camflow batch: clip {name} (run {environ.get(contract.ENV_RUN_ID)}, "
            f"stage {environ.get(contract.ENV_STAGE)})",
            file=sys.stderr,
            flush=True,
        )
        code, reason, manifest = _run_item_logged(main, environ, s3, errors, handoff)
        if code != contract.EXIT_OK:
            print(f"camflow batch: clip {name} failed (exit {code}): {reason}", file=sys.stderr)
        return code, reason, manifest


def _run_item_logged(
    main: Main,
    environ: Mapping[str, str],
    s3: Any,
    errors: _LastLine,
    handoff: Handoff | None = None,
) -> Outcome:
    started = time.monotonic()
    ctx = None
    try:
        ctx = StageContext.from_env(dict(environ))
        ctx._s3 = s3 or ctx.s3
        if handoff is not None:
            ctx._handoff = handoff
        return contract.EXIT_OK, None, _write_manifest(ctx, main(ctx), started)
    except BadInput as exc:
        return contract.EXIT_BAD_INPUT, _one_line(str(exc)), None
    except SystemExit as exc:  # a stage that exits for one clip must not end the batch
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code == contract.EXIT_OK:
            return 1, "the stage exited (code 0) before writing its manifest", None
        reason = _one_line(str(exc.code)) if isinstance(exc.code, str) else None
        return code, reason or _one_line(errors.last) or f"exited with code {code}", None
    except Exception as exc:
        traceback.print_exc()
        return 1, f"{type(exc).__name__}: {_one_line(str(exc))}", None
    finally:
        if ctx is not None:  # a batch must not fill the disk with its clips' scratch
            shutil.rmtree(ctx.scratch, ignore_errors=True)


def _write_report(path: str, payload: dict[str, Any]) -> None:
    # Atomic: the executor reads it as soon as it exists.
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, target)


Serve = Callable[[dict[str, Any], _Clients, str], object]


def _run_batch(main: Main, items: list[dict[str, Any]]) -> int:
    return _serve(items, functools.partial(_run_batch_item, main))


def _serve(items: list[dict[str, Any]], run_one: Serve) -> int:
    """Runs each item, then those the executor adds while this process is warm: in
    this thread, or on CAMFLOW_BATCH_THREADS threads that each take the next clip as
    they free up (a thread_safe stage's batches that started together)."""
    more = os.environ.get(contract.ENV_BATCH_MORE)
    feed = _Feed(
        items,
        Path(more) if more else None,
        float(os.environ.get(contract.ENV_BATCH_LINGER) or 0),
        threads=int(os.environ.get(contract.ENV_BATCH_THREADS) or 1),
    )
    s3 = _Clients()
    failures: list[BaseException] = []
    _stderr_router()  # before the threads: each of them then routes its own clip's

    def work() -> None:
        try:
            while (taken := feed.take()) is not None:
                item, position = taken
                try:
                    run_one(item, s3, position)
                finally:
                    feed.done(item)
        except BaseException as exc:  # reporting failed: the process ends, as it would alone
            failures.append(exc)
            feed.stop()

    if feed.threads == 1:
        work()
    else:
        workers = [threading.Thread(target=work, daemon=True) for _ in range(feed.threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    if failures:
        raise failures[0]
    # The supervisor is gone: clips not started are someone else's now.
    return 1 if feed.orphaned else contract.EXIT_OK


class _Feed:
    """The clips of a batch process, handed to its threads one at a time: first the
    batch's own, then those the executor adds while it is warm. A thread takes a clip
    only while fewer run than the lanes with clips left to finish allow (see
    contract.ENV_BATCH_THREADS); without lanes, one at a time."""

    def __init__(
        self, items: list[dict[str, Any]], more: Path | None, linger: float, threads: int
    ) -> None:
        self.threads = max(1, threads)
        self.orphaned = False
        self._parent = os.getppid()
        self._more, self._linger = more, linger
        self._cond = threading.Condition()
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._unfinished: collections.Counter[str | None] = collections.Counter()
        self._running = self._taken = 0
        self._first = len(items)
        self._polling = False
        self._closed = more is None
        self._add(items)

    def _add(self, items: list[dict[str, Any]]) -> None:
        self._queue.extend(items)
        self._unfinished.update(item.get(contract.LANE) for item in items)

    def _may_start(self) -> bool:
        lanes = sum(1 for count in self._unfinished.values() if count > 0)
        return self._running < min(self.threads, max(1, lanes))

    def take(self) -> tuple[dict[str, Any], str] | None:
        """The next clip and its position (``3/8``), or None: nothing more to run."""
        while True:
            with self._cond:
                while True:
                    if self.orphaned:
                        return None
                    if os.getppid() != self._parent:
                        self.stop(orphaned=True)
                        return None
                    if self._queue and self._may_start():
                        self._running += 1
                        self._taken += 1
                        total = f"/{self._first}" if self._taken <= self._first else ""
                        return self._queue.popleft(), f"{self._taken}{total}"
                    if not self._queue and not self._running and not self._polling:
                        if self._closed:
                            return None
                        # Idle: this thread waits for more; the others wait for it.
                        self._polling = True
                        break
                    self._cond.wait()
            more, still_open = [], False
            try:
                assert self._more is not None
                more, still_open = _await_more(self._more, self._linger)
            finally:
                with self._cond:
                    self._polling = False
                    self._closed = not still_open
                    self._add(more)
                    self._cond.notify_all()

    def done(self, item: dict[str, Any]) -> None:
        with self._cond:
            self._running -= 1
            self._unfinished[item.get(contract.LANE)] -= 1
            self._cond.notify_all()

    def stop(self, orphaned: bool = False) -> None:
        with self._cond:
            self.orphaned = self.orphaned or orphaned
            self._queue.clear()
            self._closed = True
            self._cond.notify_all()


def _run_batch_item(
    main: Main,
    item: dict[str, Any],
    clients: _Clients,
    position: str,
    handoff: Handoff | None = None,
) -> int:
    """Runs one clip of a batch and reports it; its exit code (143: cancelled)."""
    started_at = _utc_now()
    report = item.get("report")
    if report:
        folder = Path(report).parent
        # When this clip, not its batch, began: its own timeout counts from here. Written
        # before the cancel check, so that a cancel either finds it started (and stops
        # the process) or is seen here.
        _write_report(str(folder / contract.BATCH_STARTED), {"started_at": started_at})
        if (folder / contract.BATCH_CANCELLED).exists():
            # Cancelled before its turn: it never runs.
            _write_report(report, {"exit_code": 143, "reason": "cancelled", "started_at": None})
            return 143
    # The process's own CAMFLOW_ variables name the batch, not this clip (the item
    # carries the clip's, its share of the cores included).
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CAMFLOW_")}, **item["env"]}
    code, reason, manifest = _run_item(
        main, env, clients.for_env(env), item.get("log"), position, handoff
    )
    if report:
        _write_report(
            report,
            {
                "exit_code": code,
                "reason": reason,
                "started_at": started_at,
                "finished_at": _utc_now(),
                "manifest": manifest,
            },
        )
    return code


# --- fused stages -------------------------------------------------------------------------


@functools.cache
def stage_main(module: str) -> Main:
    """The ``main(ctx)`` of the stage program ``python -m MODULE`` runs, imported (its
    ``if __name__ == "__main__"`` part does not run)."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise ModuleNotFoundError(f"no module named {module!r}")
    name = f"{module}.__main__" if spec.submodule_search_locations is not None else module
    main = getattr(importlib.import_module(name), "main", None)
    if not callable(main):
        raise RuntimeError(
            f"{name} has no main(ctx): a stage fused with others is called as the SDK's "
            "main(ctx), so declare `batch: false` for a program that is not"
        )
    return main


def _run_chain_item(item: dict[str, Any], clients: _Clients, position: str) -> None:
    """One clip's fused stages, in order, in this process: each reports as a stage of
    its own; intermediates pass in memory; after a failure the rest are skipped."""
    handoff = Handoff()
    failed: str | None = None
    for member in item[contract.CHAIN]:
        stage = member["env"].get(contract.ENV_STAGE, "?")
        if failed is not None:
            _write_report(
                member["report"],
                {
                    "exit_code": None,
                    "skipped": True,
                    "reason": f"not run: stage {failed} failed before it in the same process",
                    "started_at": None,
                    "finished_at": _utc_now(),
                },
            )
            continue
        try:
            main = stage_main(member["module"])
        except Exception as exc:
            main = functools.partial(_cannot_import, f"{type(exc).__name__}: {exc}")
        if _run_batch_item(main, member, clients, position, handoff) != contract.EXIT_OK:
            failed = stage


def _cannot_import(reason: str, ctx: StageContext) -> StageReport:
    raise RuntimeError(f"stage program {ctx.stage} could not be loaded: {reason}")


def run_chain() -> None:
    """``python -m algorithms.chain``: the fused stages of a batch of clips (items of
    the form ``{"chain": [...]}``, see the contract), clip after clip."""
    logging.basicConfig(
        level=os.environ.get("CAMFLOW_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    items = batch_items(os.environ, member=contract.CHAIN)
    if items is None:
        raise SystemExit(f"not started by camflow: {contract.ENV_BATCH_FILE} is not set")
    sys.exit(_serve(items, _run_chain_item))


#: How often a warm batch process looks for more clips.
MORE_POLL_SECONDS = 0.02


def _take(path: Path) -> list[dict[str, Any]] | None:
    """Claims one file of further items by renaming it (the executor may be taking it
    back at the same moment: exactly one rename wins)."""
    taken = path.with_name(path.name + contract.BATCH_TAKEN)
    try:
        os.rename(path, taken)
    except FileNotFoundError:
        return None
    return json.loads(taken.read_text())


def _await_more(folder: Path, linger: float) -> tuple[list[dict[str, Any]], bool]:
    """The next items the executor adds while this process stays warm, waiting up to
    ``linger`` seconds for them, and whether it is still open. Once the wait is over it
    closes (after which the executor adds nothing) and takes what had arrived
    meanwhile."""
    idle_since = time.monotonic()
    while True:
        for path in sorted(folder.glob("*.json")):
            items = _take(path)
            if items:
                return items, True
        if time.monotonic() - idle_since >= linger:
            break
        time.sleep(MORE_POLL_SECONDS)
    with contextlib.suppress(FileExistsError):
        (folder / contract.BATCH_CLOSED).touch(exist_ok=False)
    return [item for path in sorted(folder.glob("*.json")) for item in _take(path) or []], False


def _more_items(folder: Path, linger: float) -> Iterator[dict[str, Any]]:
    """Items the executor adds while this process stays warm, one after another: it
    waits up to ``linger`` seconds after its last clip for more of the same stage."""
    while True:
        items, still_open = _await_more(folder, linger)
        yield from items
        if not still_open:
            return


def _utc_now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()
