"""The embedded S3 over real HTTP with boto3: what a write was answered for survives a
clean stop and a SIGKILL, on the same fixed port; and when the embedded S3 is chosen."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from orchestrator.embedded_s3 import DiskMirror, EmbeddedS3, Restored, choose_s3
from orchestrator.errors import ConfigError, StorageError
from orchestrator.service import s3_access
from orchestrator.settings import Settings, load_settings

# A server in a process of its own: its moto state dies with it, as camflow serve's does.
CHILD = """
import sys
from pathlib import Path
from orchestrator.embedded_s3 import EmbeddedS3
server = EmbeddedS3(int(sys.argv[1]), Path(sys.argv[2])).start()
print(server.describe(), flush=True)
sys.stdin.readline()
server.stop()
"""
#: Small multipart parts, and objects past moto's in-memory buffer spooled to its disk.
CHILD_ENV = {"S3_UPLOAD_PART_MIN_SIZE": "65536", "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": "4096"}
BUCKET = "clips"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Child:
    def __init__(self, port: int, home: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(port), str(home)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **CHILD_ENV},
        )
        assert self.process.stdout is not None
        self.started = self.process.stdout.readline()
        assert "persisting to" in self.started, self.process.communicate(timeout=10)

    def stop(self) -> None:
        """camflow serve's Ctrl-C: the server is stopped and the process ends."""
        self.process.communicate("\n", timeout=30)
        assert self.process.returncode == 0

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        if child.process.poll() is None:
            child.kill()


def _client(port: int, attempts: int = 3) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id=EmbeddedS3.ACCESS_KEY,
        aws_secret_access_key=EmbeddedS3.SECRET_KEY,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": attempts},
        ),
    )


def _multipart(s3: Any, key: str, parts: list[bytes]) -> str:
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key, ContentType="video/mp4")
    done = []
    for number, data in enumerate(parts, 1):
        part = s3.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=data
        )
        done.append({"ETag": part["ETag"], "PartNumber": number})
    answer = s3.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": done}
    )
    return str(answer["ETag"])


def _write(s3: Any, tag: str) -> dict[str, bytes]:
    """Single and multipart PUTs, a copy, deletes; returns what must be there after."""
    body = f"clip {tag}".encode()
    s3.put_object(
        Bucket=BUCKET,
        Key=f"{tag}/one.mp4",
        Body=body,
        ContentType="video/mp4",
        Metadata={"camera": "door"},
    )
    parts = [b"a" * 65536, b"b" * 65536, os.urandom(1000)]
    etag = _multipart(s3, f"{tag}/multi.mp4", parts)
    assert etag.strip('"').endswith("-3")
    large = os.urandom(2_500_000)  # more than one copy chunk
    s3.put_object(Bucket=BUCKET, Key=f"{tag}/large.bin", Body=large)
    s3.copy_object(Bucket=BUCKET, Key=f"{tag}/copy.mp4", CopySource=f"{BUCKET}/{tag}/one.mp4")
    for gone in ("gone-1", "gone-2", "gone-3"):
        s3.put_object(Bucket=BUCKET, Key=f"{tag}/{gone}", Body=b"x")
    s3.delete_object(Bucket=BUCKET, Key=f"{tag}/gone-1")
    s3.delete_objects(
        Bucket=BUCKET,
        Delete={"Objects": [{"Key": f"{tag}/gone-2"}, {"Key": f"{tag}/gone-3"}]},
    )
    # Overwritten: the later bytes are the ones kept.
    s3.put_object(Bucket=BUCKET, Key=f"{tag}/again", Body=b"first")
    s3.put_object(Bucket=BUCKET, Key=f"{tag}/again", Body=b"second")
    return {
        f"{tag}/one.mp4": body,
        f"{tag}/multi.mp4": b"".join(parts),
        f"{tag}/large.bin": large,
        f"{tag}/copy.mp4": body,
        f"{tag}/again": b"second",
    }


HEADERS = ("ETag", "LastModified", "ContentType", "ContentLength", "Metadata")


def _snapshot(s3: Any, keys: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    return {
        key: {name: s3.head_object(Bucket=BUCKET, Key=key)[name] for name in HEADERS}
        for key in keys
    }


def _check(s3: Any, expected: dict[str, bytes], heads: dict[str, dict[str, Any]]) -> None:
    listed = s3.list_objects_v2(Bucket=BUCKET)["Contents"]
    assert sorted(item["Key"] for item in listed) == sorted(expected)
    for key, data in expected.items():
        got = s3.get_object(Bucket=BUCKET, Key=key)
        assert got["Body"].read() == data, key
        assert {name: got[name] for name in HEADERS} == heads[key], key


def test_answered_writes_survive_a_stop_and_a_sigkill(
    tmp_path: Path, children: list[Child]
) -> None:
    port, home = _free_port(), tmp_path / "s3"
    children.append(Child(port, home))
    s3 = _client(port)
    s3.create_bucket(Bucket=BUCKET)
    expected = _write(s3, "before-stop")
    heads = _snapshot(s3, expected)
    assert heads["before-stop/multi.mp4"]["ETag"].strip('"').endswith("-3")
    assert heads["before-stop/one.mp4"]["Metadata"] == {"camera": "door"}
    presigned = s3.generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "before-stop/one.mp4"}, ExpiresIn=3600
    )
    children[-1].stop()

    children.append(Child(port, home))
    assert f"{len(expected)} objects in 1 buckets restored" in children[-1].started
    _check(s3, expected, heads)
    later = _write(s3, "before-kill")
    heads |= _snapshot(s3, later)
    # kill -9 the moment the last answer is in: nothing is flushed on the way out.
    children[-1].kill()

    children.append(Child(port, home))
    _check(s3, expected | later, heads)
    with urllib.request.urlopen(presigned, timeout=10) as answer:
        assert answer.read() == expected["before-stop/one.mp4"]
    children[-1].stop()
    leftovers = [p for p in home.rglob("*") if p.name.startswith(".")]
    assert not leftovers  # no temporary files, no half objects


def test_notification_configuration_and_bucket_deletion_survive(
    tmp_path: Path, children: list[Child]
) -> None:
    port, home = _free_port(), tmp_path / "s3"
    children.append(Child(port, home))
    s3 = _client(port)
    s3.create_bucket(Bucket=BUCKET)
    s3.create_bucket(Bucket="short-lived")
    config = {
        "QueueConfigurations": [
            {
                "Id": "clips",
                "QueueArn": "arn:aws:sqs:us-east-1:123456789012:camflow-clip-events",
                "Events": ["s3:ObjectCreated:*"],
            }
        ]
    }
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration=config)
    s3.put_object(Bucket=BUCKET, Key="kept", Body=b"kept")  # keeps its notification
    s3.delete_bucket(Bucket="short-lived")
    children[-1].kill()

    children.append(Child(port, home))
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == [BUCKET]
    got = s3.get_bucket_notification_configuration(Bucket=BUCKET)
    [queue] = got["QueueConfigurations"]
    assert queue["QueueArn"] == config["QueueConfigurations"][0]["QueueArn"]
    assert queue["Events"] == ["s3:ObjectCreated:*"]
    children[-1].stop()


def test_a_write_that_cannot_reach_disk_is_not_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = EmbeddedS3(directory=tmp_path / "s3").start()
    try:
        s3 = _client(server.port, attempts=1)
        bucket = f"unwritable-{uuid.uuid4().hex[:8]}"  # moto's state is per process
        s3.create_bucket(Bucket=bucket)

        def full(*_args: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(DiskMirror, "_sync_object", full)
        with pytest.raises(ClientError, match="InternalError"):
            s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    finally:
        server.stop()


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StorageError, match=r"s3\.embedded_port") as error:
            EmbeddedS3(port, tmp_path / "s3").start()
        assert f"127.0.0.1:{port}" in str(error.value)
    # The folder's lock went with the failed start: the next one may take it.
    EmbeddedS3(directory=tmp_path / "s3").start().stop()


def test_one_folder_one_server(tmp_path: Path) -> None:
    first = EmbeddedS3(directory=tmp_path / "s3").start()
    try:
        with pytest.raises(StorageError, match="in use by another embedded S3"):
            EmbeddedS3(directory=tmp_path / "s3").start()
    finally:
        first.stop()


# ---------------------------------------------------------------------------------------
# Which S3: boto3's own credential chain decides, with every source pointed at temp files.


@pytest.fixture
def no_aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """No AWS variables, empty ~/.aws files, no instance metadata service."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    files = {"config": tmp_path / "aws-config", "credentials": tmp_path / "aws-credentials"}
    for path in files.values():
        path.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(files["config"]))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(files["credentials"]))
    # Disabled, not absent: a test must not wait on a metadata service.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return files


def _settings(**s3: Any) -> Settings:
    return load_settings(None, s3=s3)


def test_embedded_only_when_the_chain_finds_nothing(
    no_aws: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert choose_s3(_settings()).embedded

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    choice = choose_s3(_settings())
    assert not choice.embedded and choice.credentials == "boto3's env provider"
    assert "secret" not in choice.credentials
    # Configured: the embedded S3 even with credentials about.
    assert choose_s3(_settings(embedded=True)).embedded


def test_shared_files_and_sso_profiles_count(
    no_aws: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    no_aws["credentials"].write_text(
        "[default]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = secret\n"
    )
    choice = choose_s3(_settings())
    assert not choice.embedded and "shared-credentials-file" in choice.credentials

    no_aws["credentials"].write_text("")
    no_aws["config"].write_text(
        "[profile fake]\nsso_start_url = https://example.awsapps.com/start\n"
        "sso_region = us-east-1\nsso_account_id = 123456789012\nsso_role_name = Reader\n"
    )
    monkeypatch.setenv("AWS_PROFILE", "fake")
    choice = choose_s3(_settings())
    assert not choice.embedded and "sso" in choice.credentials

    # A profile named but not there is a mistake to report, not a reason to go embedded.
    monkeypatch.setenv("AWS_PROFILE", "missing")
    with pytest.raises(StorageError, match="missing"):
        choose_s3(_settings())


def test_an_endpoint_or_embedded_false_means_no_embedded(
    no_aws: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not choose_s3(_settings(embedded=False)).embedded
    assert not choose_s3(_settings(endpoint_url="http://minio:9000")).embedded
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    choice = choose_s3(_settings())
    assert not choice.embedded and choice.credentials == "nowhere (boto3 found none)"
    with pytest.raises(ConfigError, match="s3"):
        _settings(embedded=True, endpoint_url="http://minio:9000")


def test_the_start_says_which_s3(
    no_aws: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="camflow")
    settings = load_settings(None, home=tmp_path / "home", s3={"embedded_port": 0})
    _access, embedded = s3_access(settings, durable=True)
    assert embedded is not None
    embedded.stop()
    assert f"S3: embedded at {embedded.endpoint_url}, persisting to {tmp_path / 'home' / 's3'}" in (
        caplog.text
    )

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert s3_access(settings, durable=True)[1] is None
    assert "S3: AWS (us-east-1), credentials from boto3's env provider" in caplog.text


def test_racing_writes_to_one_key_leave_the_last_on_disk(tmp_path: Path) -> None:
    server = EmbeddedS3(directory=tmp_path / "s3").start()
    try:
        s3 = _client(server.port)
        bucket = f"racing-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)

        def put(n: int) -> None:
            s3.put_object(Bucket=bucket, Key="k", Body=b"%d" % n)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, range(64)))
        served = s3.get_object(Bucket=bucket, Key="k")
        path = DiskMirror(tmp_path / "s3").object_path(bucket, "k")
        with open(path, "rb") as stored:
            stored.readline()
            header = json.loads(stored.readline())
            assert stored.read() == served["Body"].read()
        assert header["etag"] == served["ETag"]
    finally:
        server.stop()


def test_a_damaged_file_is_left_out_and_the_rest_restored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    server = EmbeddedS3(directory=tmp_path / "s3").start()
    bucket = f"damaged-{uuid.uuid4().hex[:8]}"
    try:
        s3 = _client(server.port)
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="whole", Body=b"whole")
        s3.put_object(Bucket=bucket, Key="cut", Body=b"cut short")
    finally:
        server.stop()
    mirror = DiskMirror(tmp_path / "s3")
    cut = mirror.object_path(bucket, "cut")
    cut.write_bytes(cut.read_bytes()[:-3])  # what no atomic write leaves, but a disk might
    restored = mirror.restore()
    keys = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets[bucket].keys
    assert "whole" in keys and "cut" not in keys
    assert restored == Restored(buckets=1, objects=1) and "cannot restore" in caplog.text
