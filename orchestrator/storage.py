"""S3 access for the orchestrator (boto3 lives here and in the stage SDK only)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from orchestrator.errors import ContentError, ObjectMissing, ObjectTooLarge, StorageError

log = logging.getLogger("camflow.s3")

#: A download whose body broke off is fetched again, this many times in all.
DOWNLOAD_TRIES = 3
BROKEN_OFF = (ReadTimeoutError, IncompleteReadError, ResponseStreamingError, ConnectionClosedError)


def _not_json_constant(name: str) -> Any:
    # Python writes NaN and Infinity by default, but they are not JSON: PostgreSQL's
    # JSON type and browsers refuse them, so they are refused here, with their name.
    raise ValueError(f"{name} is not a JSON value (JSON has no NaN or Infinity)")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int
    last_modified: datetime | None


@dataclass(frozen=True)
class ListedPage:
    objects: list[ObjectInfo]
    #: More keys follow this page.
    truncated: bool


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

    def client(self, service: str, config: Config) -> Any:
        """A boto3 client for ``service`` (s3, sqs) at this endpoint, with these keys."""
        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=config,
        )


class S3Gateway:
    def __init__(self, access: S3Access, client: Any = None) -> None:
        self.access = access
        self.client = client or access.client(
            "s3",
            # SigV4: presigned URLs that every AWS region and MinIO accept.
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"mode": "standard"},
            ),
        )

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            where = self.access.endpoint_url or "AWS"
            raise StorageError(f"S3 {what} failed at {where}: {exc}") from exc

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        with self._errors(what):
            return fn(**kwargs)

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

    def list_pages(
        self, bucket: str, prefix: str, start_after: str | None, page_size: int = 1000
    ) -> Iterator[ListedPage]:
        """Pages of objects under ``prefix`` whose keys sort after ``start_after``; one
        LIST request each, sent only when the page is asked for (the watcher stops when
        its page budget is spent)."""
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        pages = iter(
            self.client.get_paginator("list_objects_v2").paginate(
                **kwargs, PaginationConfig={"PageSize": page_size}
            )
        )
        while True:
            # The paginator sends the request as it is iterated, so failures come here.
            with self._errors("list"):
                page = next(pages, None)
            if page is None:
                return
            yield ListedPage(
                [
                    ObjectInfo(
                        key=item["Key"],
                        etag=item["ETag"].strip('"'),
                        size=int(item["Size"]),
                        last_modified=item.get("LastModified"),
                    )
                    for item in page.get("Contents", [])
                ],
                bool(page.get("IsTruncated")),
            )

    def list_after(
        self, bucket: str, prefix: str, start_after: str | None, page_size: int = 1000
    ) -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` whose keys sort after ``start_after``."""
        for page in self.list_pages(bucket, prefix, start_after, page_size):
            yield from page.objects

    def get_json(self, bucket: str, key: str, max_bytes: int | None = None) -> Any:
        """The object as JSON. ObjectMissing if there is none; ContentError if it is
        not strict JSON, or ObjectTooLarge if over ``max_bytes``, in which case the body
        is not downloaded (a stage that writes gigabytes must not exhaust our memory)."""
        return self.get_json_sized(bucket, key, max_bytes)[0]

    def get_json_sized(
        self, bucket: str, key: str, max_bytes: int | None = None
    ) -> tuple[Any, int]:
        """``get_json``, and the object's size in bytes."""
        try:
            response = self._call("get", self.client.get_object, Bucket=bucket, Key=key)
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") in {
                "NoSuchKey",
                "404",
            }:
                raise ObjectMissing(f"s3://{bucket}/{key} does not exist") from cause
            raise
        stream = response["Body"]
        size = int(response.get("ContentLength") or 0)
        if max_bytes is not None and size > max_bytes:
            stream.close()
            raise ObjectTooLarge(f"s3://{bucket}/{key}", size, max_bytes)
        try:
            # Reading one byte past the limit catches an object replaced by a larger
            # one after the answer's headers, without reading all of it.
            body = stream.read() if max_bytes is None else stream.read(max_bytes + 1)
        except (BotoCoreError, OSError) as exc:
            raise StorageError(f"S3 get of s3://{bucket}/{key} broke off: {exc}") from exc
        finally:
            stream.close()
        if max_bytes is not None and len(body) > max_bytes:
            raise ObjectTooLarge(f"s3://{bucket}/{key}", max(size, len(body)), max_bytes)
        try:
            return json.loads(body, parse_constant=_not_json_constant), len(body)
        except RecursionError:
            raise ContentError("it is nested too deeply to parse") from None
        except ValueError as exc:  # bad syntax, and bytes that are not UTF-8
            raise ContentError(str(exc)) from None

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

    def put_file(self, path: Path, bucket: str, key: str) -> ObjectInfo:
        """One PUT (no multipart): S3 then gives the object the MD5 of its bytes as its
        ETag, which the caller can know, and record, before the object exists."""
        with path.open("rb") as body:
            reply = self._call("put", self.client.put_object, Bucket=bucket, Key=key, Body=body)
        return ObjectInfo(key, reply["ETag"].strip('"'), path.stat().st_size, None)

    def delete(self, bucket: str, key: str) -> None:
        self._call("delete", self.client.delete_object, Bucket=bucket, Key=key)

    def download_file(self, bucket: str, key: str, path: Path) -> None:
        """A streamed GET into ``path`` (whole or not at all). Not boto3's transfer
        manager: for the thumbnails and results saved here it costs a HEAD, threads and
        a second request each, a third of a second for a clip's thumbnails. A body cut
        off midway is fetched again from its start, as the transfer manager does
        (botocore retries a request, not the reading of its body)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        try:
            with self._errors("download"):
                for tries_left in reversed(range(DOWNLOAD_TRIES)):
                    try:
                        self._get_into(bucket, key, partial)
                        break
                    except BROKEN_OFF as exc:
                        if tries_left == 0:
                            raise
                        log.info("download of s3://%s/%s broke off (%s); again", bucket, key, exc)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)

    def _get_into(self, bucket: str, key: str, path: Path) -> None:
        reply = self.client.get_object(Bucket=bucket, Key=key)
        with contextlib.closing(reply["Body"]) as body, path.open("wb") as out:
            for chunk in body.iter_chunks(1 << 20):
                out.write(chunk)
