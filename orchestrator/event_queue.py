"""The SQS queue that S3 event notifications arrive on (boto3 lives here).

Delivery is at least once, in any order: camflow deletes a message only after the
clips it names are committed to the store, and recording a clip twice is a no-op.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from orchestrator.errors import StorageError
from orchestrator.storage import S3Access

log = logging.getLogger("camflow.events")

#: The id of camflow's entry in a bucket's notification configuration.
NOTIFICATION_ID = "camflow-clips"


@dataclass(frozen=True)
class Message:
    receipt: str
    body: str


class EventQueue:
    def __init__(self, access: S3Access, queue: str, client: Any = None) -> None:
        self.access = access
        self.client = client or access.client(
            "sqs",
            # A long poll holds the connection up to 20 s: read longer than that.
            config=Config(read_timeout=30, retries={"mode": "standard"}),
        )
        self.url = queue if "://" in queue else self._url_of(queue)

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"SQS {what} failed: {exc}") from exc

    def _url_of(self, name: str) -> str:
        try:
            return str(self.client.get_queue_url(QueueName=name)["QueueUrl"])
        except ClientError:
            created = self._call("create_queue", self.client.create_queue, QueueName=name)
            log.info("created the event queue %s", name)
            return str(created["QueueUrl"])
        except BotoCoreError as exc:
            raise StorageError(f"cannot reach SQS: {exc}") from exc

    @property
    def arn(self) -> str:
        attributes = self._call(
            "get_queue_attributes",
            self.client.get_queue_attributes,
            QueueUrl=self.url,
            AttributeNames=["QueueArn"],
        )
        return str(attributes["Attributes"]["QueueArn"])

    def subscribe(self, s3_client: Any, buckets: list[str]) -> None:
        """Has each bucket notify this queue of created objects. Other entries of a
        bucket's notification configuration are kept; the queue's policy lets S3 send."""
        arn = self.arn
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "camflow-s3-notifications",
                    "Effect": "Allow",
                    "Principal": {"Service": "s3.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": arn,
                    "Condition": {
                        "ArnLike": {"aws:SourceArn": [f"arn:aws:s3:::{b}" for b in buckets]}
                    },
                }
            ],
        }
        self._call(
            "set_queue_attributes",
            self.client.set_queue_attributes,
            QueueUrl=self.url,
            Attributes={"Policy": json.dumps(policy)},
        )
        for bucket in buckets:
            try:
                config = s3_client.get_bucket_notification_configuration(Bucket=bucket)
                config.pop("ResponseMetadata", None)
                queues = [
                    q
                    for q in config.get("QueueConfigurations", [])
                    if q.get("Id") != NOTIFICATION_ID
                ]
                queues.append(
                    {"Id": NOTIFICATION_ID, "QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}
                )
                config["QueueConfigurations"] = queues
                s3_client.put_bucket_notification_configuration(
                    Bucket=bucket, NotificationConfiguration=config
                )
            except (ClientError, BotoCoreError) as exc:
                raise StorageError(
                    f"could not point bucket {bucket}'s notifications at {self.url}: {exc}"
                ) from exc
        log.info("buckets %s notify %s of new objects", ", ".join(buckets), self.url)

    def receive(self, wait_seconds: int, max_messages: int = 10) -> list[Message]:
        reply = self._call(
            "receive_message",
            self.client.receive_message,
            QueueUrl=self.url,
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=wait_seconds,
        )
        return [Message(m["ReceiptHandle"], m["Body"]) for m in reply.get("Messages", [])]

    def delete(self, messages: list[Message]) -> None:
        if not messages:
            return
        entries = [{"Id": str(n), "ReceiptHandle": m.receipt} for n, m in enumerate(messages)]
        reply = self._call(
            "delete_message_batch",
            self.client.delete_message_batch,
            QueueUrl=self.url,
            Entries=entries,
        )
        for failed in reply.get("Failed", []):
            # It comes back after its visibility timeout and is recorded again: harmless.
            log.warning("could not delete event message %s: %s", failed.get("Id"), failed)
