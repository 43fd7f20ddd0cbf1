"""Shared fixtures: a real S3 endpoint over HTTP, real H.264 clips, stores, settings."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orchestrator.cli.samples import PHOTOS, Shot, make_clip
from orchestrator.embedded_s3 import EmbeddedS3
from orchestrator.settings import Settings, load_settings
from tests.postgres import POSTGRES_URL

if TYPE_CHECKING:
    from tests.test_kube_executor import Cluster

# Any credentials do for moto; set before boto3 looks.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(autouse=True)
def _own_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's ~/.camflow."""
    monkeypatch.setenv("CAMFLOW_HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[EmbeddedS3]:
    """A moto S3 server on 127.0.0.1, spoken to over real HTTP."""
    server = EmbeddedS3().start()
    yield server
    server.stop()


def seed_objects(bucket: str, keys: list[str], body: bytes = b"x") -> None:
    """Puts many objects straight into moto's backend (HTTP does ~90 PUT/s here).

    Seed before notifications are configured: moto would queue a message for each."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    if bucket not in backend.buckets:
        backend.create_bucket(bucket, "us-east-1")
    for key in keys:
        backend.put_object(bucket, key, body)


class SampleClips:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.shots: dict[str, Shot] = {}

    def make(self, name: str, photo: str, seconds: float = 3.0) -> Path:
        path = self.folder / f"{name}.mp4"
        if name not in self.shots:
            self.shots[name] = make_clip(path, photo, seconds=seconds)
        return path

    @property
    def face(self) -> Path:
        return self.make("face", "astronaut")

    @property
    def other_face(self) -> Path:
        return self.make("face2", "camera")

    @property
    def no_face(self) -> Path:
        return self.make("noface", "coffee")

    def true_face_box(self, name: str, frame: int) -> tuple[float, ...]:
        photo = {"face": "astronaut", "face2": "camera"}[name]
        face = PHOTOS[photo].face
        assert face is not None
        return self.shots[name].face_box(face, frame)

    @property
    def truncated(self) -> Path:
        path = self.folder / "truncated.mp4"
        if not path.exists():
            data = self.face.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        return path

    @property
    def corrupt(self) -> Path:
        """The real clip's container header with its video data overwritten by noise."""
        path = self.folder / "corrupt.mp4"
        if not path.exists():
            import random

            data = bytearray(self.face.read_bytes())
            rng = random.Random(7)
            for i in range(64, len(data)):
                data[i] = rng.randrange(256)
            path.write_bytes(bytes(data))
        return path

    @property
    def empty(self) -> Path:
        path = self.folder / "empty.mp4"
        path.write_bytes(b"")
        return path

    @property
    def not_video(self) -> Path:
        path = self.folder / "notes.mp4"
        path.write_text("meeting notes, saved with the wrong extension\n" * 40)
        return path


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> SampleClips:
    return SampleClips(tmp_path_factory.mktemp("clips"))


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema in the local PostgreSQL, dropped afterwards."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    schema = f"camflow_test_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    except sqlalchemy.exc.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc.orig}")
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'camflow.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def settings(tmp_path: Path, s3_server: EmbeddedS3) -> Settings:
    """Settings for one test: its own buckets, home and SQLite store."""
    suffix = uuid.uuid4().hex[:8]
    return load_settings(
        home=tmp_path / "home",
        s3={
            "endpoint_url": s3_server.endpoint_url,
            "embedded": False,
            "ingest_bucket": f"ingest-{suffix}",
            "results_bucket": f"results-{suffix}",
            "access_key_id": "testing",
            "secret_access_key": "testing",
        },
        engine={"retry_backoff_seconds": 0.2, "retry_backoff_max_seconds": 1},
        watcher={"wait_seconds": 0},
    )


@pytest.fixture(scope="session")
def motion_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A subject crossing a still scene between 1.5 s and 3.0 s, and a still scene."""
    from orchestrator.cli.samples import make_moving_object_clip, make_static_clip

    folder = tmp_path_factory.mktemp("motion")
    moving, still = folder / "moving.mp4", folder / "still.mp4"
    make_moving_object_clip(moving, seconds=4.0, moving=(1.5, 3.0))
    make_static_clip(still, "coffee", seconds=3.0)
    return {"moving": moving, "still": still}


@pytest.fixture
def made(tmp_path: Path, s3_server: EmbeddedS3) -> Iterator[list[Cluster]]:
    """Emulated clusters a test makes (tests.test_kube_executor._cluster), stopped after."""
    clusters: list[Cluster] = []
    yield clusters
    for cluster in clusters:
        cluster.runner.stop()
        cluster.emulator.stop()
