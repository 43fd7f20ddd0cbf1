"""The embedded S3: moto's server on 127.0.0.1, and optionally a copy of its objects on
disk, so that what a PUT was answered for survives a restart or a crash.

moto keeps everything in memory. A thin WSGI layer in front of it notes which buckets
and objects a request changed (moto's backend calls, seen through small wrappers), and
before the response leaves it writes the new state of each to ``<directory>`` with an
atomic replace and fsyncs. At start the folder is loaded back into moto. Object bytes
and metadata live in plain files of our own format, never in pickles of moto's
classes, so a moto upgrade does not strand them.

Kept: buckets (name, region), each object's latest bytes, ETag (multipart ones
included), Last-Modified, Content-Type and other content headers, user metadata,
storage class and checksum, and bucket notification configurations. Not kept:
multipart uploads still in progress, object versions but the latest, tags, ACLs and
other bucket settings (versioning, policies, lifecycle, CORS), and SQS queues.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import inspect
import json
import logging
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote

from orchestrator.errors import StorageError
from orchestrator.settings import Settings
from orchestrator.storage import S3Access

log = logging.getLogger("camflow.s3")

#: Copy object bytes this much at a time: never a whole object in memory.
CHUNK = 1024 * 1024
_MAGIC = b"camflow-s3-object 1\n"
_BUCKET_FILE = "bucket.json"


class EmbeddedS3:
    """A moto S3 (and SQS) server on 127.0.0.1.

    ``port`` None or 0: a free port, chosen at start. ``directory`` None: objects live
    in memory only and go when the process does (the tests' shared server); else they
    are kept under it, and an answered write is on disk.
    """

    #: The keys of a server that does not enforce IAM (any signature passes there).
    ACCESS_KEY = "camflow-embedded"
    SECRET_KEY = "camflow-embedded-secret"  # not a secret: such a server checks nothing

    def __init__(
        self, port: int | None = None, directory: Path | None = None, enforce: bool = False
    ) -> None:
        self.port = port or 0
        self.directory = directory
        #: IAM enforced, as S3 does: the orchestrator signs with random admin keys made
        #: at start and kept in memory; stages get per-execution users (orchestrator.grants).
        self.enforce = enforce
        self._keys = (self.ACCESS_KEY, self.SECRET_KEY)
        self.restored = Restored()
        self._mirror: DiskMirror | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def describe(self) -> str:
        if self.directory is None:
            return f"embedded at {self.endpoint_url}, in memory"
        return (
            f"embedded at {self.endpoint_url}, persisting to {self.directory} "
            f"({self.restored.objects} objects in {self.restored.buckets} buckets restored)"
        )

    def start(self) -> EmbeddedS3:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        # One log line per request would drown what camflow itself says.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        mirror = DiskMirror(self.directory) if self.directory is not None else None
        if mirror is not None:
            mirror.lock()
        try:
            listener = _listen(self.port)
            try:
                self.port = int(listener.getsockname()[1])
                app: Any = DomainDispatcherApplication(create_backend_app)
                if mirror is not None:
                    # Loaded before serving: no client sees a half-restored store (they
                    # wait in the listen backlog meanwhile).
                    self.restored = mirror.restore()
                    _record_backend_changes()
                    app = DurableApp(app, mirror)
                if self.enforce:
                    from orchestrator.embedded_auth import EnforcingApp, create_admin

                    self._keys = create_admin(str(self.port))
                    app = EnforcingApp(app, self._keys[0])
                self._server = make_server(
                    "127.0.0.1",
                    self.port,
                    app,
                    threaded=True,
                    request_handler=MotoRequestHandler,
                    fd=listener.fileno(),
                )
            finally:
                listener.close()  # the server holds its own duplicate
        except BaseException:
            if mirror is not None:
                mirror.unlock()
            raise
        self._mirror = mirror
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},  # how long stop() waits for the loop
            name="embedded-s3",
            daemon=True,
        )
        self._thread.start()
        log.debug("embedded S3 started: %s", self.describe())
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._mirror is not None:
            self._mirror.unlock()
            self._mirror = None

    def access(self, region: str) -> S3Access:
        return S3Access(self.endpoint_url, region, *self._keys)


def _listen(port: int) -> socket.socket:
    # Bound here rather than by werkzeug, which answers a taken port with sys.exit.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A restart must get its port back at once, while old connections sit in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StorageError(
                f"the embedded S3 cannot listen on 127.0.0.1:{port}: the port is in use "
                "(another camflow serve, or another program). Stop it, or choose another "
                "port with s3.embedded_port (CAMFLOW_S3__EMBEDDED_PORT)"
            ) from exc
        raise StorageError(f"the embedded S3 cannot listen on 127.0.0.1:{port}: {exc}") from exc
    return sock


# ---------------------------------------------------------------------------------------
# Which buckets and objects a request changed.


#: Which moto backend: (account id, partition).
Where = tuple[str, str]


@dataclass
class Changes:
    """What moto's backend changed while one request was handled, in order: (where,
    bucket, key), key None for the bucket itself; and notification configurations set."""

    touched: dict[tuple[Where, str, str | None], None] = field(default_factory=dict)
    notifications: dict[tuple[Where, str], dict[str, Any] | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.touched)


_current = threading.local()


def _recording() -> Changes | None:
    return getattr(_current, "changes", None)


@contextlib.contextmanager
def recording() -> Iterator[Changes]:
    """Collects, in this thread, what moto's S3 backend changes meanwhile."""
    changes = Changes()
    _current.changes = changes
    try:
        yield changes
    finally:
        _current.changes = None


def _wrapped(original: Callable[..., Any], what: str) -> Callable[..., Any]:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def wrapper(backend: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(backend, *args, **kwargs)
        changes = _recording()
        if changes is not None:
            bound = signature.bind(backend, *args, **kwargs).arguments
            where = (str(backend.account_id), str(backend.region_name))
            bucket = str(bound["bucket_name"])
            key = str(bound["key_name"]) if what == "object" else None
            changes.touched[(where, bucket, key)] = None
            if what == "notification":
                changes.notifications[(where, bucket)] = bound["notification_config"]
        return result

    wrapper.__camflow_recorded__ = True  # type: ignore[attr-defined]
    return wrapper


#: Every change of an object's bytes goes through put_object (PUT, POST, copy, complete
#: multipart) or delete_object (single and batch deletes): moto's own backend API.
_RECORDED = {
    "put_object": "object",
    "delete_object": "object",
    "create_bucket": "bucket",
    "delete_bucket": "bucket",
    "put_bucket_notification_configuration": "notification",
}
_install_lock = threading.Lock()


def _record_backend_changes() -> None:
    """Wraps the S3 backend's writing methods, once per process. Outside a recording
    request (the tests' in-memory server, direct backend calls) they only pass through."""
    from moto.s3.models import S3Backend

    with _install_lock:
        for name, what in _RECORDED.items():
            original = getattr(S3Backend, name)
            if not getattr(original, "__camflow_recorded__", False):
                setattr(S3Backend, name, _wrapped(original, what))


class DurableApp:
    """WSGI: moto's application, with each answered S3 write on disk first."""

    def __init__(self, inner: Any, mirror: DiskMirror) -> None:
        self.inner = inner
        self.mirror = mirror

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        app = self.inner.get_application(environ)
        if getattr(app, "service", None) != "s3":
            return app(environ, start_response)
        answer: list[Any] = []
        written: list[bytes] = []

        def hold(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answer[:] = [status, headers, exc_info]
            return written.append

        with recording() as changes:
            body = app(environ, hold)
        # Whatever the status: only completed backend calls are recorded, and the disk
        # is to hold what moto holds.
        if changes:
            try:
                self.mirror.apply(changes)
            except Exception as exc:
                log.exception("the embedded S3 could not write a change to disk")
                if hasattr(body, "close"):
                    body.close()
                return _internal_error(start_response, exc)
        start_response(*answer)
        return [*written, *body] if written else body


def _internal_error(start_response: Callable[..., Any], exc: Exception) -> list[bytes]:
    # S3's own shape: SDKs retry an InternalError, and the write is not acknowledged.
    message = f"camflow could not write this change to disk: {exc}"
    escaped = message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    payload = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
        f"<Message>{escaped}</Message></Error>"
    ).encode()
    start_response(
        "500 Internal Server Error",
        [("Content-Type", "application/xml"), ("Content-Length", str(len(payload)))],
    )
    return [payload]


# ---------------------------------------------------------------------------------------
# The folder.


@dataclass(frozen=True)
class Restored:
    buckets: int = 0
    objects: int = 0


class DiskMirror:
    """``<root>/buckets/<bucket>/bucket.json`` and ``.../objects/<xx>/<sha256 of key>``,
    one file per object: a magic line, a JSON line of metadata, then the bytes. One
    file, so its metadata and bytes are replaced together."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.buckets = root / "buckets"
        self.trash = root / "trash"
        # Striped: a key's disk state is read from moto and written under one lock, so
        # two requests for one key cannot leave the older state on disk.
        self._locks = [threading.Lock() for _ in range(64)]
        self._lock_file: IO[bytes] | None = None

    def lock(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / "LOCK", "ab")  # noqa: SIM115 (held until unlock)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            raise StorageError(
                f"{self.root} is in use by another embedded S3 (another camflow serve "
                "with the same CAMFLOW_HOME); stop that one first"
            ) from exc
        self._lock_file = handle

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _key_lock(self, bucket: str, key: str | None) -> threading.Lock:
        digest = hashlib.blake2b(f"{bucket}\0{key}".encode(errors="surrogatepass")).digest()
        return self._locks[digest[0] % len(self._locks)]

    def bucket_dir(self, bucket: str) -> Path:
        return self.buckets / quote(bucket, safe="")

    def object_path(self, bucket: str, key: str) -> Path:
        digest = hashlib.sha256(key.encode(errors="surrogatepass")).hexdigest()
        return self.bucket_dir(bucket) / "objects" / digest[:2] / digest

    # Writing ---------------------------------------------------------------------------

    def apply(self, changes: Changes) -> None:
        """Writes the current state of everything ``changes`` names, then fsyncs the
        folders that changed: when this returns, the state is on disk."""
        from moto.s3.models import s3_backends

        dirty: set[Path] = set()
        for (account, partition), bucket, key in changes.touched:
            backend = s3_backends[account][partition]
            if key is not None:
                self._sync_object(backend, bucket, key, dirty)
            elif ((account, partition), bucket) in changes.notifications:
                config = changes.notifications[((account, partition), bucket)]
                self._sync_bucket(backend, bucket, dirty, set_notification=True, config=config)
            else:
                self._sync_bucket(backend, bucket, dirty)
        for folder in sorted(dirty, key=lambda p: len(p.parts), reverse=True):
            _fsync_dir(folder)
        if self.trash in dirty:
            self._empty_trash()

    def _sync_bucket(
        self,
        backend: Any,
        bucket: str,
        dirty: set[Path],
        set_notification: bool = False,
        config: dict[str, Any] | None = None,
    ) -> None:
        folder = self.bucket_dir(bucket)
        with self._key_lock(bucket, None):
            found = backend.buckets.get(bucket)
            if found is None:
                if folder.exists():
                    # Renamed away first: a crash mid-delete leaves no half bucket.
                    self.trash.mkdir(exist_ok=True)
                    os.replace(folder, self.trash / uuid.uuid4().hex)
                    dirty.update({self.buckets, self.trash})
                return
            described = _read_json(folder / _BUCKET_FILE) or {}
            described.update(
                name=bucket,
                region=found.region_name,
                account=backend.account_id,
                partition=backend.region_name,
            )
            if set_notification:
                described["notification"] = config
            data = json.dumps(described, indent=1, default=str).encode()
            _write_atomic(folder / _BUCKET_FILE, lambda out: out.write(data), dirty)

    def _sync_object(self, backend: Any, bucket: str, key: str, dirty: set[Path]) -> None:
        path = self.object_path(bucket, key)
        with self._key_lock(bucket, key):
            for _ in range(100):
                found = backend.buckets.get(bucket)
                current = found.keys.get(key) if found is not None else None
                try:
                    _write_object(path, current, dirty)
                    return
                except ValueError:
                    # moto closes a key's buffer as soon as a later PUT replaces it: that
                    # PUT's state is the one to keep, so read again.
                    if not getattr(current, "disposed", False):
                        raise
            raise StorageError(f"{bucket}/{key} kept changing while it was written to disk")

    def _empty_trash(self) -> None:
        if self.trash.is_dir():
            for item in self.trash.iterdir():
                shutil.rmtree(item, ignore_errors=True)

    # Loading ---------------------------------------------------------------------------

    def restore(self) -> Restored:
        """Loads the folder into moto's backends: buckets, objects, then notification
        configurations (so restoring sends no events)."""
        from moto.s3.models import s3_backends

        self.buckets.mkdir(parents=True, exist_ok=True)
        self._empty_trash()
        buckets = objects = 0
        notifications: list[tuple[Any, str, dict[str, Any]]] = []
        for folder in sorted(self.buckets.iterdir()):
            if not folder.is_dir():
                continue
            described = _read_json(folder / _BUCKET_FILE)
            if described is None:
                # Its CreateBucket was never answered, or it was deleted meanwhile.
                log.warning("embedded S3: %s has no %s; left out", folder, _BUCKET_FILE)
                continue
            for leftover in folder.glob(".*.tmp"):  # a write cut short: never answered
                leftover.unlink()
            name = described.get("name") or unquote(folder.name)
            backend = s3_backends[described.get("account") or _default_account()][
                described.get("partition") or "aws"
            ]
            if name not in backend.buckets:
                backend.create_bucket(name, described.get("region") or "us-east-1")
            buckets += 1
            for path in _object_files(folder / "objects"):
                try:
                    _restore_object(backend, name, path)
                    objects += 1
                except Exception as exc:
                    # One unreadable file must not keep the rest from being served.
                    log.warning("embedded S3: cannot restore %s (%s); left out", path, exc)
            if described.get("notification"):
                notifications.append((backend, name, described["notification"]))
        for backend, name, config in notifications:
            try:
                backend.put_bucket_notification_configuration(name, config)
            except Exception as exc:
                log.warning("embedded S3: cannot restore %s's notifications: %s", name, exc)
        return Restored(buckets, objects)


def _default_account() -> str:
    from moto.core import DEFAULT_ACCOUNT_ID

    return str(DEFAULT_ACCOUNT_ID)


def _object_files(folder: Path) -> Iterable[Path]:
    if not folder.is_dir():
        return
    for fan in sorted(folder.iterdir()):
        if not fan.is_dir():
            continue
        for path in sorted(fan.iterdir()):
            if path.name.startswith("."):  # a write cut short: never acknowledged
                path.unlink(missing_ok=True)
            else:
                yield path


#: FakeKey attributes kept as they are, where this moto version has them.
_CHECKSUM_FIELDS = ("checksum_algorithm", "checksum_value", "checksum_type", "checksum_parts")


def _write_object(path: Path, current: Any, dirty: set[Path]) -> None:
    """Puts ``current`` (a moto key; anything else: gone) at ``path``. ValueError: moto
    closed the key's bytes meanwhile."""
    from moto.s3.models import FakeKey

    if not isinstance(current, FakeKey):  # gone, or a delete marker
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            dirty.add(path.parent)
        return
    header = _describe(current)

    def write(out: IO[bytes]) -> None:
        out.write(_MAGIC)
        out.write(json.dumps(header, ensure_ascii=True).encode() + b"\n")
        if _copy_value(current, out) != header["size"]:
            raise ValueError("the object changed while it was copied")

    _write_atomic(path, write, dirty)


def _describe(key: Any) -> dict[str, Any]:
    return {
        "key": key.name,
        # As moto reported it: a clip is bucket + key + ETag, so a multipart "…-3" must
        # come back exactly, or the clip would count as new.
        "etag": key.etag,
        "last_modified": key.last_modified.isoformat(),
        "size": key.size,
        "storage_class": key.storage_class,
        "metadata": dict(key.metadata),
        "checksum": {name: getattr(key, name, None) for name in _CHECKSUM_FIELDS},
    }


def _copy_value(key: Any, out: IO[bytes]) -> int:
    """Copies a moto key's bytes into ``out`` a chunk at a time, from the spooled file
    moto keeps them in (in memory when small, on disk when large)."""
    buffer = getattr(key, "_value_buffer", None)
    if buffer is None:  # a moto without the spooled buffer: its public, whole copy
        data = key.value
        out.write(data)
        return len(data)
    lock = getattr(key, "lock", None) or contextlib.nullcontext()
    offset = 0
    while True:
        # The key's lock only per chunk: GETs of a large object are not held up.
        with lock:
            buffer.seek(offset)
            chunk = buffer.read(CHUNK)
        if not chunk:
            return offset
        out.write(chunk)
        offset += len(chunk)


def _restore_object(backend: Any, bucket: str, path: Path) -> None:
    with open(path, "rb") as source:
        if source.readline() != _MAGIC:
            raise ValueError("not an object file of this camflow")
        header = json.loads(source.readline())
        key = backend.put_object(
            bucket,
            header["key"],
            b"",
            storage=header.get("storage_class"),
            etag=header["etag"].strip('"'),
            disable_notification=True,
        )
        try:
            _fill(key, source)
            if key.size != header["size"]:
                raise ValueError(f"holds {key.size} bytes, not {header['size']}")
        except BaseException:
            backend.delete_object(bucket, header["key"])  # no empty stand-in
            raise
    key.set_metadata(dict(header.get("metadata") or {}))
    key.last_modified = datetime.fromisoformat(header["last_modified"])
    for name, value in (header.get("checksum") or {}).items():
        if value is not None and hasattr(key, name):
            setattr(key, name, value)


def _fill(key: Any, source: IO[bytes]) -> None:
    """Streams the rest of ``source`` into a moto key's spooled buffer (moto moves it to
    a temporary file past its in-memory size, as with an upload)."""
    buffer = getattr(key, "_value_buffer", None)
    if buffer is None or not hasattr(key, "contentsize"):  # another moto: its setter
        key.value = source.read()
        return
    with key.lock:
        buffer.seek(0)
        buffer.truncate()
        shutil.copyfileobj(source, buffer, CHUNK)
        key.contentsize = buffer.tell()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _write_atomic(target: Path, write: Callable[[IO[bytes]], Any], dirty: set[Path]) -> None:
    _make_dirs(target.parent, dirty)
    temporary = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(temporary, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    dirty.add(target.parent)


def _make_dirs(folder: Path, dirty: set[Path]) -> None:
    missing: list[Path] = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):
            new.mkdir()
        # A new folder's name is durable once its parent is fsynced.
        dirty.add(new.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:  # moved to the trash by a later request meanwhile
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------
# Which S3 camflow uses.


def aws_credentials_method() -> str | None:
    """Where boto3's whole credential chain finds credentials, by the provider's name
    ("env", "shared-credentials-file", "sso", "iam-role", ...); None when it finds none.

    With no metadata service, botocore's own limits (1 s, one attempt, unless
    AWS_METADATA_SERVICE_TIMEOUT / _NUM_ATTEMPTS say otherwise) keep this to about 2 s.
    """
    import boto3
    from botocore.exceptions import BotoCoreError

    try:
        credentials = boto3.Session().get_credentials()
    except BotoCoreError as exc:
        # Configured but broken (a missing profile, a failing credential_process): the
        # user meant AWS, so this is an error, not a reason to go embedded.
        raise StorageError(f"AWS credentials are configured but unusable: {exc}") from exc
    return str(credentials.method) if credentials is not None else None


@dataclass(frozen=True)
class S3Choice:
    embedded: bool
    #: Where a real S3's credentials come from, as the start-up line says it.
    credentials: str


def choose_s3(settings: Settings) -> S3Choice:
    """The embedded S3 when configured (``s3.embedded: true``), or on "auto" when no
    endpoint is set and boto3's whole chain (variables, ~/.aws files, SSO, container
    and instance roles) finds no credentials: a machine with an AWS identity uses AWS."""
    s3 = settings.s3
    if s3.embedded is True:
        return S3Choice(True, "the embedded S3's own")
    if s3.access_key_id:
        return S3Choice(False, "camflow's settings (s3.access_key_id)")
    method = aws_credentials_method()
    if method is None and s3.embedded == "auto" and settings.s3_endpoint is None:
        return S3Choice(True, "the embedded S3's own")
    return S3Choice(False, f"boto3's {method} provider" if method else "nowhere (boto3 found none)")
