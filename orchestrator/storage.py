"""S3 access for the orchestrator (boto3 lives here and in the stage SDK only)."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from orchestrator.errors import StorageError

log = logging.getLogger("camflow.s3")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int
    last_modified: datetime | None


@dataclass(frozen=True)
class S3Access:
    """How the orchestrator and its stages reach S3."""

    endpoint_url: str | None
    region: str
    access_key_id: str | None = None
    secret_access_key: str | None = None

    def stage_env(self) -> dict[str, str]:
        """Standard AWS variables for stage processes; boto3 reads them itself."""
        env = {"AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region}
        if self.endpoint_url:
            env["AWS_ENDPOINT_URL"] = self.endpoint_url
        if self.access_key_id and self.secret_access_key:
            env["AWS_ACCESS_KEY_ID"] = self.access_key_id
            env["AWS_SECRET_ACCESS_KEY"] = self.secret_access_key
        return env


class S3Gateway:
    def __init__(self, access: S3Access, client: Any = None) -> None:
        self.access = access
        self.client = client or boto3.client(
            "s3",
            endpoint_url=access.endpoint_url,
            region_name=access.region,
            aws_access_key_id=access.access_key_id,
            aws_secret_access_key=access.secret_access_key,
            # SigV4: presigned URLs that every AWS region and MinIO accept.
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"mode": "standard"},
            ),
        )

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            where = self.access.endpoint_url or "AWS"
            raise StorageError(f"S3 {what} failed at {where}: {exc}") from exc

    def ensure_bucket(self, bucket: str) -> None:
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError:
            self._call("create_bucket", self.client.create_bucket, Bucket=bucket)
            log.info("created bucket %s", bucket)
        except BotoCoreError as exc:
            raise StorageError(
                f"cannot reach S3 at {self.access.endpoint_url or 'AWS'}: {exc}"
            ) from exc

    def child_prefixes(self, bucket: str, prefix: str) -> list[str]:
        """The "folders" directly under ``prefix``."""
        found: list[str] = []
        token = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/"}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list", self.client.list_objects_v2, **kwargs)
            found += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            if not page.get("IsTruncated"):
                return found
            token = page["NextContinuationToken"]

    def list_after(
        self, bucket: str, prefix: str, start_after: str | None, page_size: int = 1000
    ) -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` whose keys sort after ``start_after``."""
        token = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
            if token:
                kwargs["ContinuationToken"] = token
            elif start_after:
                kwargs["StartAfter"] = start_after
            page = self._call("list", self.client.list_objects_v2, **kwargs)
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    key=item["Key"],
                    etag=item["ETag"].strip('"'),
                    size=int(item["Size"]),
                    last_modified=item.get("LastModified"),
                )
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def get_json(self, bucket: str, key: str) -> Any:
        body = self._call("get", self.client.get_object, Bucket=bucket, Key=key)["Body"].read()
        return json.loads(body)

    def put_json(self, bucket: str, key: str, payload: Any) -> str:
        data = json.dumps(payload, indent=2, default=str).encode()
        self._call(
            "put",
            self.client.put_object,
            Bucket=bucket,
            Key=key,
            Body=data,
            ContentType="application/json",
        )
        return f"s3://{bucket}/{key}"

    def upload_file(self, path: Path, bucket: str, key: str) -> ObjectInfo:
        self._call("upload", self.client.upload_file, Filename=str(path), Bucket=bucket, Key=key)
        head = self._call("head", self.client.head_object, Bucket=bucket, Key=key)
        return ObjectInfo(key, head["ETag"].strip('"'), int(head["ContentLength"]), None)

    def download_file(self, bucket: str, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._call(
            "download", self.client.download_file, Bucket=bucket, Key=key, Filename=str(path)
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedS3:
    """A moto S3 server on 127.0.0.1, for trying camflow with no S3 at all.

    It keeps objects in memory: they are gone when camflow stops.
    """

    ACCESS_KEY = "camflow-embedded"
    SECRET_KEY = "camflow-embedded-secret"  # not a secret: the server is local and throwaway

    def __init__(self, port: int | None = None) -> None:
        from moto.server import ThreadedMotoServer

        self.port = port or _free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EmbeddedS3:
        # One log line per request would drown what camflow itself says.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server.start()
        log.info("started the embedded S3 server at %s (in memory)", self.endpoint_url)
        return self

    def stop(self) -> None:
        self._server.stop()

    def access(self, region: str) -> S3Access:
        return S3Access(self.endpoint_url, region, self.ACCESS_KEY, self.SECRET_KEY)
