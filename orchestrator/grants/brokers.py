"""Who mints a stage's credentials.

- ``IamUserBroker``: an IAM user per execution, its policy the grant, one access key;
  deleted once its execution ends, and by a sweep once it expires. For the embedded S3
  (moto enforces a user's own policies, see ``embedded_auth``) and any S3 that speaks the
  IAM API. An IAM key does not expire by itself: the sweep is what ends it, so the
  service runs it every minute.
- ``AssumeRoleBroker``: on AWS, STS AssumeRole on the stage role with the grant as the
  session policy: the session can do only what both the role and the grant allow, and
  the credentials expire by themselves (STS's floor is 15 minutes).

Either way the orchestrator's own keys never reach a stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from orchestrator.errors import StorageError
from orchestrator.grants.policy import Grant, expiry, policy_document

log = logging.getLogger("camflow.grants")

#: Where camflow's per-execution IAM users live: the sweep looks only here.
USER_PATH = "/camflow-stages/"
_EXPIRES_TAG = "camflow-expires"
_POLICY_NAME = "camflow-stage"
#: STS refuses shorter sessions.
_STS_MIN_SECONDS = 900


@dataclass(frozen=True)
class StageCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None
    expires_at: datetime
    #: What ``revoke`` needs: the IAM user's name, or None when they expire by themselves.
    handle: str | None = None

    def env(self) -> dict[str, str]:
        """The standard AWS variables, which boto3 in any stage image reads itself."""
        env = {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }
        if self.session_token:
            env["AWS_SESSION_TOKEN"] = self.session_token
        return env


#: The variables that carry credentials: scrubbed from everything a stage inherits.
CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
)


def without_credentials(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in CREDENTIAL_VARIABLES}


class Broker(Protocol):
    #: Whether its credentials carry a session token (a Job's Secret then holds one).
    session_tokens: bool

    def issue(self, grant: Grant) -> StageCredentials: ...

    def revoke(self, credentials: StageCredentials) -> None: ...

    def sweep(self, now: datetime | None = None) -> int: ...


def _code(exc: Exception) -> str | None:
    return exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None


def _user_name(grant: Grant, issued: datetime) -> str:
    # IAM user names: 64 characters of [\w+=,.@-]. Unique per issue, readable in a listing.
    digest = hashlib.sha256(f"{grant.label}\0{issued.isoformat()}".encode()).hexdigest()[:12]
    return f"stage-{grant.label[:44]}-{digest}"


class IamUserBroker:
    session_tokens = False

    def __init__(self, iam: Any, partition: str = "aws") -> None:
        self.iam = iam
        self.partition = partition

    def issue(self, grant: Grant) -> StageCredentials:
        issued = datetime.now(UTC)
        expires = expiry(issued, grant)
        name = _user_name(grant, issued)
        try:
            self.iam.create_user(
                UserName=name,
                Path=USER_PATH,
                Tags=[{"Key": _EXPIRES_TAG, "Value": expires.isoformat()}],
            )
            self.iam.put_user_policy(
                UserName=name,
                PolicyName=_POLICY_NAME,
                PolicyDocument=json.dumps(policy_document(grant, self.partition)),
            )
            key = self.iam.create_access_key(UserName=name)["AccessKey"]
        except (ClientError, BotoCoreError) as exc:  # refused, or IAM not reachable
            self._delete(name)
            raise StorageError(f"cannot mint stage credentials for {grant.label}: {exc}") from exc
        log.debug("issued %s for %s until %s", name, grant.label, expires.isoformat())
        return StageCredentials(key["AccessKeyId"], key["SecretAccessKey"], None, expires, name)

    def revoke(self, credentials: StageCredentials) -> None:
        if credentials.handle:
            self._delete(credentials.handle)

    def _delete(self, name: str) -> None:
        # Every step tolerates "already gone": a revoke and a sweep may race. What fails
        # here (IAM away) is left to the next sweep.
        try:
            for key in self.iam.list_access_keys(UserName=name)["AccessKeyMetadata"]:
                self.iam.delete_access_key(UserName=name, AccessKeyId=key["AccessKeyId"])
            self.iam.delete_user_policy(UserName=name, PolicyName=_POLICY_NAME)
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) != "NoSuchEntity":
                log.warning("cannot fully revoke stage user %s: %s", name, exc)
        try:
            self.iam.delete_user(UserName=name)
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) != "NoSuchEntity":
                log.warning("cannot delete stage user %s: %s", name, exc)

    def sweep(self, now: datetime | None = None) -> int:
        """Deletes the stage users whose time is up (a crash left them, or their stage
        outlived its timeout). Returns how many."""
        now = now or datetime.now(UTC)
        gone = 0
        for page in self.iam.get_paginator("list_users").paginate(PathPrefix=USER_PATH):
            for user in page["Users"]:
                tags = self.iam.list_user_tags(UserName=user["UserName"])["Tags"]
                expires = next((t["Value"] for t in tags if t["Key"] == _EXPIRES_TAG), None)
                if expires is None or datetime.fromisoformat(expires) <= now:
                    self._delete(user["UserName"])
                    gone += 1
        if gone:
            log.info("swept %d expired stage credentials", gone)
        return gone


class AssumeRoleBroker:
    session_tokens = True

    def __init__(
        self, sts: Any, role_arn: str, partition: str = "aws", max_seconds: int = 3600
    ) -> None:
        self.sts = sts
        self.role_arn = role_arn
        self.partition = partition
        #: The role's MaxSessionDuration (STS refuses longer): a batch that may outrun it
        #: gets this much, and a clip past it fails transiently and is retried.
        self.max_seconds = max_seconds

    def issue(self, grant: Grant) -> StageCredentials:
        try:
            answer = self.sts.assume_role(
                RoleArn=self.role_arn,
                RoleSessionName=grant.label[:64],
                Policy=json.dumps(policy_document(grant, self.partition), separators=(",", ":")),
                DurationSeconds=min(max(grant.seconds, _STS_MIN_SECONDS), self.max_seconds),
            )
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(
                f"cannot assume {self.role_arn} for {grant.label}: {exc}; check that the "
                "orchestrator may sts:AssumeRole it (s3.stage_role_arn)"
            ) from exc
        c = answer["Credentials"]
        return StageCredentials(
            c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"], c["Expiration"]
        )

    def revoke(self, credentials: StageCredentials) -> None:
        # STS sessions cannot be revoked one by one; they expire with the stage.
        return None

    def sweep(self, now: datetime | None = None) -> int:
        return 0
