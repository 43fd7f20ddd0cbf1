"""What the API lends out: presigned POSTs for uploads, presigned GETs for artifacts.

moto 5 alone does not check a POST policy at all (neither its signature nor its
conditions: an oversize body or another key is stored, and `expiration` is not read),
only that a Content-Length is sent. So each grant's policy document is decoded and
checked here condition by condition, the upload is made against the suite's moto with
the grant as issued, and the embedded S3 that `camflow serve` runs (which checks a
POST's policy itself, see orchestrator.embedded_post) is shown refusing what S3 refuses.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from orchestrator.api.app import create_app
from orchestrator.api.artifacts import judge, run_folder
from orchestrator.api.keys import create_key
from orchestrator.embedded_post import post_problem
from orchestrator.embedded_s3 import EmbeddedS3
from orchestrator.service import open_runtime
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Clip, Run
from orchestrator.store.models import Role
from tests.api_world import seed_clip


@pytest.fixture
def world(settings: Settings) -> Iterator[dict[str, Any]]:
    settings.api.upload_max_bytes = 4096
    with open_runtime(settings) as runtime:
        made = {}
        for name, tenant, role, camera in [
            ("camera", "tenant-a", Role.CAMERA, "door"),
            ("customer_a", "tenant-a", Role.CUSTOMER, None),
            ("customer_b", "tenant-b", Role.CUSTOMER, None),
        ]:
            _, text = create_key(runtime.store, tenant, role, camera)
            made[name] = {"Authorization": f"Bearer {text}"}
        yield {"runtime": runtime, "client": TestClient(create_app(runtime)), "keys": made}


def _policy(grant: dict[str, Any]) -> dict[str, Any]:
    policy: dict[str, Any] = json.loads(base64.b64decode(grant["fields"]["policy"]))
    return policy


# --- uploads ----------------------------------------------------------------------------


def test_an_upload_grant_is_a_post_policy_for_one_key_and_a_bounded_size(
    world: dict[str, Any],
) -> None:
    settings = world["runtime"].settings
    before = datetime.now(UTC).replace(microsecond=0)
    response = world["client"].post("/v1/cameras/door/uploads", headers=world["keys"]["camera"])
    assert response.status_code == 201, response.text
    grant = response.json()
    assert grant["method"] == "POST" and grant["max_bytes"] == 4096
    assert grant["key"].startswith("tenant-a/door/") and grant["key"].endswith(".mp4")
    fields = grant["fields"]
    assert fields["key"] == grant["key"] and fields["Content-Type"] == "video/mp4"
    assert fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256" and fields["x-amz-signature"]

    policy = _policy(grant)
    conditions = policy["conditions"]
    # Exactly one key, exactly one bucket, exactly this content type: no starts-with.
    assert {"key": grant["key"]} in conditions
    assert {"bucket": settings.s3.ingest_bucket} in conditions
    assert {"Content-Type": "video/mp4"} in conditions
    assert not [c for c in conditions if isinstance(c, list) and c[0] == "starts-with"]
    # At least one byte, at most the setting.
    assert ["content-length-range", 1, 4096] in conditions
    # Every field the form sends is one the policy names (S3 refuses any other).
    named = {next(iter(c)).lower() for c in conditions if isinstance(c, dict)}
    assert {name.lower() for name in fields} - {"policy", "x-amz-signature"} <= named
    expires = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    lifetime = timedelta(seconds=settings.api.upload_url_seconds)
    assert before + lifetime <= expires <= datetime.now(UTC) + lifetime + timedelta(seconds=1)


def test_a_camera_sends_its_clip_with_the_grant_as_issued(world: dict[str, Any]) -> None:
    runtime, client = world["runtime"], world["client"]
    grant = client.post(
        "/v1/cameras/door/uploads",
        headers=world["keys"]["camera"],
        json={"content_type": "video/quicktime", "recorded_at": "2026-03-01T12:00:00+02:00"},
    ).json()
    assert grant["key"].startswith("tenant-a/door/2026/03/01/100000-")  # in UTC
    assert {"Content-Type": "video/quicktime"} in _policy(grant)["conditions"]
    body = b"\x00\x00\x00\x18ftypqt  " + bytes(100)
    sent = httpx.post(grant["url"], data=grant["fields"], files={"file": body})
    assert sent.status_code == 204, sent.text
    stored = runtime.s3.client.get_object(Bucket=grant["bucket"], Key=grant["key"])
    assert stored["Body"].read() == body
    assert stored["ContentType"] == "video/quicktime"


@pytest.mark.parametrize(
    "body",
    [
        {"recorded_at": "2026-03-01T12:00:00"},  # no offset: never the server's local time
        {"recorded_at": "2026-03-01"},
        {"recorded_at": 1772366400},
        {"recorded_at": "2026-03-01T12:00:00Z\n"},
        {"content_type": "video/mp4\n"},
        {"content_type": "text/html"},
    ],
)
def test_a_bad_upload_request_is_a_4xx_problem(world: dict[str, Any], body: dict[str, Any]) -> None:
    response = world["client"].post(
        "/v1/cameras/door/uploads", headers=world["keys"]["camera"], json=body
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


# --- artifacts --------------------------------------------------------------------------


def _set_artifacts(world: dict[str, Any], clip: Clip, artifacts: Any) -> Run:
    store = world["runtime"].store
    with store.session() as session:
        run = session.exec(select(Run).where(Run.clip_id == clip.id)).one()
        run.result = {**(run.result or {}), "artifacts": artifacts}
        session.add(run)
        session.commit()
        return run


def test_only_objects_under_the_runs_own_results_are_signed(world: dict[str, Any]) -> None:
    runtime, client = world["runtime"], world["client"]
    results, ingest = runtime.settings.s3.results_bucket, runtime.settings.s3.ingest_bucket
    mine = seed_clip(runtime, "tenant-a", "door")
    other_camera = seed_clip(runtime, "tenant-a", "yard")
    theirs = seed_clip(runtime, "tenant-b", "gate")
    folder = run_folder("tenant-a", "door", mine.id, "faces")
    their_folder = run_folder("tenant-b", "gate", theirs.id, "faces")
    yard_folder = run_folder("tenant-a", "yard", other_camera.id, "faces")  # another clip
    own = f"s3://{results}/{folder}thumbnails/0.jpg"
    _set_artifacts(
        world,
        mine,
        {
            "thumbnails": [
                {"t": 0.0, "uri": own},
                {"t": 1.0, "uri": f"s3://{results}/{their_folder}thumbnails/0.jpg"},  # B's
                {"t": 2.0, "uri": f"s3://{ingest}/{theirs.key}"},  # another bucket
                {"t": 3.0, "uri": f"s3://{results}/{folder}../../{theirs.id}/x.jpg"},
                {"t": 4.0, "uri": f"s3://{results}/{yard_folder}thumbnails/0.jpg"},
                {"t": 5.0, "uri": "https://example.com/x.jpg"},
                {"uri": own},  # no time
                "not an object",
            ],
            "anonymized_video": f"s3://{results}/tenant-b/gate/{theirs.id}/faces/a.mp4",
        },
    )
    response = client.get(f"/v1/clips/{mine.id}/artifacts", headers=world["keys"]["customer_a"])
    assert response.status_code == 200, response.text
    listed = response.json()
    signed = [a for a in listed if a["kind"] != "withheld"]
    withheld = [a for a in listed if a["kind"] == "withheld"]
    assert [(a["kind"], a["t"]) for a in signed] == [("thumbnail", 0.0)]
    assert httpx.get(signed[0]["url"]).content == b"jpeg"
    assert len(withheld) == 8
    reasons = " | ".join(a["reason"] for a in withheld)
    assert "outside this run's results" in reasons
    assert "is not in the results bucket" in reasons
    assert "'.' or '..' segment" in reasons
    assert "is not an s3:// URI" in reasons and "no time `t`" in reasons
    assert "anonymized_video: " in reasons
    assert all("url" not in a for a in withheld)
    # Nothing of tenant B's is signed, whatever tenant A's result says.
    assert "X-Amz-Signature" not in json.dumps(withheld)
    assert theirs.id not in signed[0]["url"]


def test_the_dashboard_shows_only_signed_thumbnails(world: dict[str, Any]) -> None:
    runtime, client = world["runtime"], world["client"]
    results = runtime.settings.s3.results_bucket
    mine = seed_clip(runtime, "tenant-a", "door")
    theirs = seed_clip(runtime, "tenant-b", "gate")
    stolen = f"{run_folder('tenant-b', 'gate', theirs.id, 'faces')}thumbnails/0.jpg"
    run = _set_artifacts(
        world, mine, {"thumbnails": [{"t": 0.0, "uri": f"s3://{results}/{stolen}"}]}
    )
    page = client.get("/dashboard/login")
    token = page.cookies.get("camflow_csrf")
    key = world["keys"]["customer_a"]["Authorization"].removeprefix("Bearer ")
    client.post("/dashboard/login", data={"key": key, "csrf": token}, follow_redirects=False)
    html = client.get(f"/dashboard/runs/{run.id}").text
    assert "None for this run." in html and stolen not in html


@pytest.mark.parametrize(
    ("uri", "allowed"),
    [
        ("s3://results/t/c/c-1/faces/thumbnails/0.jpg", True),
        ("s3://results/t/c/c-1/faces/a/b/c.mp4", True),
        ("s3://results/t/c/c-1/facesx/0.jpg", False),  # another pipeline's folder
        ("s3://results/t/c/c-1/faces/", False),
        ("s3://results/t/c/c-1/faces//0.jpg", False),
        ("s3://results/t/c/c-1/faces/./0.jpg", False),
        ("s3://results/t/c/c-1/faces/../faces/0.jpg", False),
        ("s3://results/t/c/c-2/faces/0.jpg", False),
        ("s3://results/u/c/c-1/faces/0.jpg", False),
        ("s3://results2/t/c/c-1/faces/0.jpg", False),
        ("s3://other/t/c/c-1/faces/0.jpg", False),
        ("s3:/results/t/c/c-1/faces/0.jpg", False),
        ("results/t/c/c-1/faces/0.jpg", False),
        (None, False),
        (["s3://results/t/c/c-1/faces/0.jpg"], False),
    ],
)
def test_judge(uri: object, allowed: bool) -> None:
    verdict = judge(uri, "results", run_folder("t", "c", "c-1", "faces"))
    assert isinstance(verdict, tuple) is allowed, verdict


# --- the embedded S3 enforces the grant -------------------------------------------------


@pytest.fixture
def enforcing(tmp_path: Path) -> Iterator[Settings]:
    """Settings on an embedded S3 that enforces IAM, as `camflow serve` starts it."""
    server = EmbeddedS3(enforce=True).start()
    access = server.access("us-east-1")
    suffix = uuid.uuid4().hex[:8]
    try:
        yield load_settings(
            home=tmp_path / "home",
            s3={
                "endpoint_url": server.endpoint_url,
                "embedded": False,
                "ingest_bucket": f"ingest-{suffix}",
                "results_bucket": f"results-{suffix}",
                "access_key_id": access.access_key_id,
                "secret_access_key": access.secret_access_key,
            },
            api={"upload_max_bytes": 4096},
        )
    finally:
        server.stop()


def test_the_embedded_s3_takes_a_grants_upload_and_enforces_its_policy(
    enforcing: Settings,
) -> None:
    with open_runtime(enforcing) as runtime:
        _, camera = create_key(runtime.store, "tenant-a", Role.CAMERA, "door")
        client = TestClient(create_app(runtime))
        headers = {"Authorization": f"Bearer {camera}"}

        def grant() -> dict[str, Any]:
            answer = client.post("/v1/cameras/door/uploads", headers=headers)
            assert answer.status_code == 201, answer.text
            return dict(answer.json())

        def send(grant: dict[str, Any], body: bytes, **fields: str) -> httpx.Response:
            form = {**grant["fields"], **fields}
            return httpx.post(grant["url"], data=form, files={"file": body})

        first = grant()
        too_big = send(first, bytes(4097))
        assert (too_big.status_code, "EntityTooLarge") == (400, _code(too_big))
        assert _code(send(first, b"")) == "EntityTooSmall"
        elsewhere = first["key"].replace("tenant-a/door/", "tenant-b/gate/")
        assert _code(send(first, b"clip", key=elsewhere)) == "AccessDenied"
        assert _code(send(first, b"clip", **{"Content-Type": "text/html"})) == "AccessDenied"
        assert _code(send(first, b"clip", acl="public-read")) == "AccessDenied"
        forged = {**first, "url": first["url"].replace("ingest-", "results-")}
        assert _code(send(forged, b"clip")) == "AccessDenied"
        unsigned = {**first, "fields": {**first["fields"], "x-amz-signature": "0" * 64}}
        assert _code(send(unsigned, b"clip")) == "AccessDenied"
        listed = runtime.s3.client.list_objects_v2(Bucket=first["bucket"])
        assert listed.get("KeyCount") == 0  # nothing refused was stored

        sent = send(first, bytes(4096))
        assert sent.status_code == 204, sent.text
        stored = runtime.s3.client.head_object(Bucket=first["bucket"], Key=first["key"])
        assert (stored["ContentLength"], stored["ContentType"]) == (4096, "video/mp4")


def _code(response: httpx.Response) -> str:
    found = re.search(r"<Code>([^<]+)</Code>", response.text)
    return found.group(1) if found else f"HTTP {response.status_code}"


def test_a_policy_is_refused_once_it_expires_or_when_another_key_signed_it(
    world: dict[str, Any],
) -> None:
    grant = world["client"].post("/v1/cameras/door/uploads", headers=world["keys"]["camera"]).json()
    fields = {name.lower(): value for name, value in grant["fields"].items()}
    key_id = fields["x-amz-credential"].split("/")[0]
    secret = world["runtime"].s3.access.secret_access_key

    def problem(now: datetime, trusted: str = key_id, size: int = 10) -> str | None:
        refused = post_problem(fields, size, grant["bucket"], trusted, lambda _: secret, now)
        return refused.message if refused else None

    expires = datetime.fromisoformat(_policy(grant)["expiration"].replace("Z", "+00:00"))
    assert problem(expires - timedelta(seconds=1)) is None
    assert problem(expires) == "Invalid according to Policy: Policy expired."
    assert problem(expires, trusted="AKIAOTHER") == (
        "only the orchestrator's own presigned POSTs are accepted"
    )
    assert "maximum allowed size (4096 bytes)" in str(
        problem(expires - timedelta(seconds=1), size=4097)
    )


def test_a_grant_cannot_smuggle_a_key_a_size_or_another_operation(enforcing: Settings) -> None:
    """moto reads a form its own way (the first `key`, the last file part, the query as
    the operation): each way to make it store what was not checked is refused."""
    with open_runtime(enforcing) as runtime:
        _, camera = create_key(runtime.store, "tenant-a", Role.CAMERA, "door")
        client = TestClient(create_app(runtime))
        grant = client.post(
            "/v1/cameras/door/uploads", headers={"Authorization": f"Bearer {camera}"}
        ).json()
        bucket, fields = grant["bucket"], grant["fields"]
        victim = "tenant-b/gate/2026/01/01/000000.mp4"
        runtime.s3.client.put_object(Bucket=bucket, Key=victim, Body=b"theirs")

        # Another tenant's key first, the granted one after it, in another case.
        smuggled = {"key": victim, **{(k if k != "key" else "Key"): v for k, v in fields.items()}}
        two_keys = httpx.post(grant["url"], data=smuggled, files={"file": b"clip"})
        assert _code(two_keys) == "AccessDenied"
        # A small `file` that is checked and a large part after it that moto would store.
        two_parts = httpx.post(
            grant["url"], data=fields, files=[("file", b"x"), ("zzz", bytes(5000))]
        )
        assert _code(two_parts) == "InvalidArgument"
        # The same valid form to ?delete, with a Delete document as the file.
        delete = f"<Delete><Object><Key>{victim}</Key></Object></Delete>".encode()
        as_delete = httpx.post(grant["url"] + "?delete", data=fields, files={"file": delete})
        assert _code(as_delete) == "AccessDenied"
        assert runtime.s3.client.get_object(Bucket=bucket, Key=victim)["Body"].read() == b"theirs"
        assert runtime.s3.client.list_objects_v2(Bucket=bucket)["KeyCount"] == 1

        # moto's own admin API is not S3: it would give out every key, or reset auth.
        endpoint = grant["url"].rsplit("/", 1)[0]
        for method, path in (("GET", "/moto-api/data.json"), ("POST", "/moto-api/reset-auth")):
            answer = httpx.request(method, endpoint + path, headers={"Authorization": "junk"})
            assert answer.status_code == 403, path
