"""A VPC endpoint's prefix lists, looked up in the EC2 API: the addresses a gateway
endpoint routes to S3, which a NetworkPolicy (addresses only) must list one by one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from orchestrator.errors import CamflowError


class PrefixListError(CamflowError):
    """A prefix list could not be found or read."""


def resolve(ec2: Any, names: Iterable[str]) -> dict[str, list[str]]:
    """Each prefix list (``pl-…`` or its name, e.g. ``com.amazonaws.us-east-1.s3``)
    -> its CIDRs, in the order EC2 lists them."""
    resolved: dict[str, list[str]] = {}
    for name in names:
        try:
            found = (
                ec2.describe_managed_prefix_lists(PrefixListIds=[name])
                if name.startswith("pl-")
                else ec2.describe_managed_prefix_lists(
                    Filters=[{"Name": "prefix-list-name", "Values": [name]}]
                )
            )["PrefixLists"]
            if len(found) != 1:
                raise PrefixListError(
                    f"prefix list {name!r}: {len(found)} found in this account and region; "
                    "name it by its pl-… id (`aws ec2 describe-managed-prefix-lists`)"
                )
            pages = ec2.get_paginator("get_managed_prefix_list_entries").paginate(
                PrefixListId=found[0]["PrefixListId"]
            )
            resolved[name] = [entry["Cidr"] for page in pages for entry in page["Entries"]]
        except (BotoCoreError, ClientError) as exc:
            raise PrefixListError(f"prefix list {name!r} could not be read: {exc}") from exc
        if not resolved[name]:
            raise PrefixListError(f"prefix list {name!r} has no entries: nothing to allow")
    return resolved
