"""Listings past S3's 1,000 keys a page, and local log folders whose path needs quoting."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from orchestrator.cli.trial import save_outputs, stage_log
from orchestrator.embedded_s3 import EmbeddedS3
from orchestrator.errors import StorageError
from orchestrator.executors.local_runner import STDERR
from orchestrator.storage import S3Gateway
from tests.conftest import seed_objects

KEYS = 2_345


@pytest.fixture(scope="module")
def listed(s3_server: EmbeddedS3) -> tuple[S3Gateway, str, list[str]]:
    """A bucket holding more keys under one prefix than one LIST answer carries."""
    bucket = f"many-{uuid.uuid4().hex[:8]}"
    keys = [f"out/{i:05d}.json" for i in range(KEYS)]
    seed_objects(bucket, [*keys, "other/after-the-prefix.json"], body=b"{}")
    return S3Gateway(s3_server.access("us-east-1")), bucket, keys


def _count_lists(s3: S3Gateway) -> list[str]:
    sent: list[str] = []
    s3.client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.url))
    return sent


def test_listing_goes_past_the_first_page_one_request_a_page(
    listed: tuple[S3Gateway, str, list[str]],
) -> None:
    s3, bucket, keys = listed
    sent = _count_lists(s3)
    pages = list(s3.list_pages(bucket, "out/", None))
    assert [p.truncated for p in pages] == [True, True, False]
    assert [o.key for p in pages for o in p.objects] == keys
    assert len(sent) == 3
    assert [o.size for o in s3.list_after(bucket, "out/", None, page_size=500)] == [2] * KEYS


def test_listing_starts_after_a_key_and_keeps_to_it_across_pages(
    listed: tuple[S3Gateway, str, list[str]],
) -> None:
    s3, bucket, keys = listed
    listing = [o.key for o in s3.list_after(bucket, "out/", keys[99], page_size=1000)]
    assert listing == keys[100:]


def test_a_listing_that_fails_is_a_storage_error(s3_server: EmbeddedS3) -> None:
    s3 = S3Gateway(s3_server.access("us-east-1"))
    with pytest.raises(StorageError, match=r"S3 list failed at http://.*NoSuchBucket"):
        list(s3.list_after("no-such-bucket-here", "", None))


@pytest.mark.slow  # a thousand downloads: about 15 s here
def test_try_saves_every_output_however_many(
    listed: tuple[S3Gateway, str, list[str]], tmp_path: Path
) -> None:
    s3, bucket, _keys = listed
    prefix = "trial/"
    names = [f"{i:04d}.json" for i in range(1_001)]
    seed_objects(bucket, [prefix + n for n in [*names, "_manifest.json"]], body=b"{}")
    outputs, manifest = save_outputs(s3, bucket, prefix, tmp_path)
    assert [o["path"] for o in outputs] == [*names, "_manifest.json"]
    assert len(list(tmp_path.iterdir())) == len(names) + 1
    assert manifest == {}


def test_try_reads_the_log_of_an_attempt_folder_with_a_space(tmp_path: Path) -> None:
    folder = tmp_path / "my home" / "attempts" / "a-1%20"
    folder.mkdir(parents=True)
    (folder / STDERR).write_text("Traceback: it went wrong\n")
    # The executor gives the folder as a file: URI, quoted (my%20home).
    assert stage_log(folder.as_uri()) == "Traceback: it went wrong\n"
