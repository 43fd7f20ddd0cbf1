"""Which broker a deployment uses, from the settings."""

from __future__ import annotations

from botocore.config import Config

from orchestrator.errors import ConfigError
from orchestrator.grants.brokers import AssumeRoleBroker, Broker, IamUserBroker
from orchestrator.settings import Settings
from orchestrator.storage import S3Access


def broker_for(settings: Settings, access: S3Access) -> Broker:
    """``access`` is the orchestrator's own: it mints, stages never hold it."""
    how = settings.s3.stage_credentials
    if how == "auto":
        how = "iam-user" if access.endpoint_url else "assume-role"
    config = Config(retries={"mode": "standard"})
    if how == "iam-user":
        return IamUserBroker(access.client("iam", config))
    if not settings.s3.stage_role_arn:
        raise ConfigError(
            "settings",
            "s3.stage_role_arn",
            "stages get per-execution credentials from STS on AWS: set it "
            "(CAMFLOW_S3__STAGE_ROLE_ARN) to the role their sessions assume, one the "
            "orchestrator may sts:AssumeRole (see the README's Security model)",
        )
    return AssumeRoleBroker(
        access.client("sts", config),
        settings.s3.stage_role_arn,
        max_seconds=settings.s3.stage_session_max_seconds,
    )
