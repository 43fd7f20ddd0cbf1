"""The HTTP API: isolation between tenants and roles is tested, not assumed."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from orchestrator.api.app import create_app
from orchestrator.api.keys import create_key, revoke
from orchestrator.domain.catalog import load_algorithm
from orchestrator.domain.layout import clip_id, upload_key
from orchestrator.service import Runtime, open_runtime, write_heartbeat
from orchestrator.settings import PROJECT_ROOT, Settings
from orchestrator.store import Clip, Run
from orchestrator.store.models import Role, RunStatus, utcnow

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def _seed(runtime: Runtime, tenant: str, camera: str) -> Clip:
    """A clip with a finished run whose result names a thumbnail in S3."""
    bucket, results = runtime.settings.s3.ingest_bucket, runtime.settings.s3.results_bucket
    key = upload_key(tenant, camera, T0)
    runtime.s3.client.put_object(Bucket=bucket, Key=key, Body=b"clip")
    thumb = f"{tenant}/{camera}/thumb.jpg"
    runtime.s3.client.put_object(Bucket=results, Key=thumb, Body=b"jpeg")
    clip = Clip(
        id=clip_id(bucket, key, tenant),
        bucket=bucket,
        key=key,
        etag=tenant,
        size=4,
        tenant=tenant,
        camera=camera,
    )
    runtime.store.record_clips([clip])
    run = Run(id=f"r-{tenant[:8]:0<8}{camera[:8]:0<8}"[:18], clip_id=clip.id, pipeline="faces")
    runtime.store.plan(clip.id, [run])
    runtime.store.finish_run(
        run.id,
        RunStatus.SUCCEEDED,
        None,
        {
            "clip_id": clip.id,
            "status": "succeeded",
            "frames": [],
            "artifacts": {"thumbnails": [{"t": 0.0, "uri": f"s3://{results}/{thumb}"}]},
        },
        None,
        utcnow(),
    )
    return clip


@pytest.fixture
def world(settings: Settings) -> Iterator[dict[str, Any]]:
    with open_runtime(settings) as runtime:
        clips = {"a": _seed(runtime, "tenant-a", "door"), "b": _seed(runtime, "tenant-b", "gate")}
        made = {}
        for name, tenant, role, camera in [
            ("camera_a", "tenant-a", Role.CAMERA, "door"),
            ("customer_a", "tenant-a", Role.CUSTOMER, None),
            ("author_a", "tenant-a", Role.AUTHOR, None),
            ("camera_b", "tenant-b", Role.CAMERA, "gate"),
            ("customer_b", "tenant-b", Role.CUSTOMER, None),
            ("author_b", "tenant-b", Role.AUTHOR, None),
            ("admin", "ops", Role.ADMIN, None),
        ]:
            row, text = create_key(runtime.store, tenant, role, camera)
            made[name] = {"Authorization": f"Bearer {text}"}
            made[name + "_id"] = row.id
        manifest = load_algorithm(PROJECT_ROOT / "algorithms" / "publish" / "algorithm.yaml")
        b_algorithm = manifest.model_copy(update={"name": "b-secret-sauce"})
        runtime.registry.register_manifest(b_algorithm, owner="tenant-b")
        yield {
            "runtime": runtime,
            "client": TestClient(create_app(runtime)),
            "clips": clips,
            "keys": made,
            "manifest": manifest,
        }


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["detail"]
    return body


def test_openapi_and_operations(world: dict[str, Any]) -> None:
    client = world["client"]
    spec = client.get("/openapi.json").json()
    assert "/v1/cameras/{camera}/uploads" in spec["paths"]
    assert client.get("/healthz").json() == {"status": "ok"}
    _problem(client.get("/readyz"), 503)
    write_heartbeat(world["runtime"].settings.home)
    assert client.get("/readyz").json()["status"] == "ready"
    metrics = client.get("/metrics").text
    assert "# TYPE camflow_clips_discovered_total counter" in metrics
    assert 'camflow_runs_active{status="running"} 0.0' in metrics  # both seeded runs ended
    assert "# TYPE camflow_stage_duration_seconds histogram" in metrics
    assert "# TYPE camflow_watcher_lag_seconds gauge" in metrics
    assert "# TYPE camflow_stage_attempts_in_flight gauge" in metrics


ENDPOINTS = [
    ("GET", "/v1/clips"),
    ("GET", "/v1/runs"),
    ("GET", "/v1/clips/{b}"),
    ("GET", "/v1/clips/{b}/results"),
    ("GET", "/v1/clips/{b}/artifacts"),
    ("POST", "/v1/cameras/gate/uploads"),
    ("GET", "/v1/algorithms"),
    ("GET", "/v1/algorithms/b-secret-sauce"),
    ("POST", "/v1/algorithms/b-secret-sauce/versions/1.0.0/promote"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_no_key_or_a_bad_key_is_refused(world: dict[str, Any], method: str, path: str) -> None:
    url = path.format(b=world["clips"]["b"].id)
    _problem(world["client"].request(method, url), 401)
    bad = {"Authorization": "Bearer cfk_0000000000000000_nope"}
    _problem(world["client"].request(method, url, headers=bad), 401)


def test_tenant_a_cannot_read_list_sign_or_promote_tenant_b(world: dict[str, Any]) -> None:
    client, keys, b = world["client"], world["keys"], world["clips"]["b"]
    a = keys["customer_a"]
    for path in (f"/v1/clips/{b.id}", f"/v1/clips/{b.id}/results", f"/v1/clips/{b.id}/artifacts"):
        _problem(client.get(path, headers=a), 404)
    assert [c["tenant"] for c in client.get("/v1/clips", headers=a).json()["items"]] == ["tenant-a"]
    assert {r["clip_id"] for r in client.get("/v1/runs", headers=a).json()["items"]} == {
        world["clips"]["a"].id
    }
    # B's own customer does see it, with signed URLs that work.
    signed = client.get(f"/v1/clips/{b.id}/artifacts", headers=keys["customer_b"]).json()
    assert httpx.get(signed[0]["url"]).content == b"jpeg"
    # Authors: B's algorithm is invisible to A, cannot be promoted nor shadowed by A.
    author_a = keys["author_a"]
    names = {v["name"] for v in client.get("/v1/algorithms", headers=author_a).json()}
    assert "b-secret-sauce" not in names and "faces" in names
    _problem(client.get("/v1/algorithms/b-secret-sauce", headers=author_a), 404)
    _problem(
        client.post("/v1/algorithms/b-secret-sauce/versions/1.0.0/promote", headers=author_a), 404
    )
    stolen = world["manifest"].model_copy(update={"name": "b-secret-sauce", "version": "9.0.0"})
    _problem(
        client.post(
            "/v1/algorithms", headers=author_a, json={"manifest": stolen.model_dump(mode="json")}
        ),
        403,
    )
    # Nor the operator's built-ins.
    _problem(client.post("/v1/algorithms/faces/versions/1.0.0/promote", headers=author_a), 403)
    promoted = client.post(
        "/v1/algorithms/b-secret-sauce/versions/1.0.0/promote", headers=keys["author_b"]
    )
    assert promoted.json()["channel"] == "stable"


def test_roles_are_enforced(world: dict[str, Any]) -> None:
    client, keys, a = world["client"], world["keys"], world["clips"]["a"]
    camera = keys["camera_a"]
    for path in ("/v1/clips", "/v1/runs", f"/v1/clips/{a.id}/results", "/v1/algorithms"):
        _problem(client.get(path, headers=camera), 403)
    _problem(client.post("/v1/cameras/gate/uploads", headers=camera), 403)  # B's camera
    _problem(client.post("/v1/cameras/yard/uploads", headers=camera), 403)  # not its camera
    _problem(client.post("/v1/cameras/door/uploads", headers=keys["customer_a"]), 403)
    _problem(client.get("/v1/algorithms", headers=keys["customer_a"]), 403)
    # The admin sees across tenants.
    assert (
        client.get(f"/v1/clips/{world['clips']['b'].id}", headers=keys["admin"]).json()["tenant"]
        == "tenant-b"
    )


def test_a_revoked_key_stops_working_at_once(world: dict[str, Any]) -> None:
    client, keys = world["client"], world["keys"]
    assert client.get("/v1/clips", headers=keys["customer_a"]).status_code == 200
    assert revoke(world["runtime"].store, keys["customer_a_id"])
    _problem(client.get("/v1/clips", headers=keys["customer_a"]), 401)


@pytest.mark.parametrize("camera", ["..", "-x", "a b", "dóór", "x" * 64, "%2e%2e"])
def test_odd_camera_names_are_refused(world: dict[str, Any], camera: str) -> None:
    response = world["client"].post(f"/v1/cameras/{camera}/uploads", headers=world["keys"]["admin"])
    assert response.status_code in (400, 403, 404), response.text
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/clips?limit=0",
        "/v1/clips?limit=abc",
        "/v1/clips?since=yesterday",
        "/v1/clips?cursor=%%%",
        "/v1/clips?cursor=eyJ4Ijp9",
        "/v1/runs?status=done",
        "/v1/clips/c-..%2F..%2Fetc",
        "/v1/clips/../../etc/passwd",
        "/v1/clips/%00",
        "/v1/nothing-here",
    ],
)
def test_nothing_a_caller_sends_makes_a_500(world: dict[str, Any], path: str) -> None:
    response = world["client"].get(path, headers=world["keys"]["customer_a"])
    assert 400 <= response.status_code < 500, (path, response.status_code, response.text)


def test_bad_bodies_are_4xx_problems(world: dict[str, Any]) -> None:
    client, author = world["client"], world["keys"]["author_a"]
    _problem(client.post("/v1/algorithms", headers=author, content=b"{not json"), 422)
    _problem(client.post("/v1/algorithms", headers=author, json={"manifest": {"name": "x"}}), 422)
    _problem(
        client.post(
            "/v1/cameras/door/uploads",
            headers=world["keys"]["camera_a"],
            json={"content_type": "text/html"},
        ),
        422,
    )


def test_pagination_walks_every_clip_once(world: dict[str, Any]) -> None:
    runtime, client = world["runtime"], world["client"]
    for minute in range(5):
        key = upload_key("tenant-a", "door", T0.replace(minute=minute + 1))
        runtime.store.record_clips(
            [
                Clip(
                    id=clip_id("b", key, "e"),
                    bucket="b",
                    key=key,
                    etag="e",
                    size=1,
                    tenant="tenant-a",
                    camera="door",
                )
            ]
        )
    seen, cursor = [], None
    while True:
        page = client.get(
            "/v1/clips",
            params={"limit": 2, **({"cursor": cursor} if cursor else {})},
            headers=world["keys"]["customer_a"],
        ).json()
        seen += [c["clip_id"] for c in page["items"]]
        cursor = page["next"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 6


def test_a_camera_uploads_with_plain_http_and_the_watcher_finds_it(
    world: dict[str, Any],
) -> None:
    runtime, client = world["runtime"], world["client"]
    runtime.watcher.tick()  # what the fixture put there
    grant = client.post("/v1/cameras/door/uploads", headers=world["keys"]["camera_a"]).json()
    assert grant["key"].startswith("tenant-a/door/") and grant["expires_in"] == 300
    put = httpx.put(grant["url"], content=b"\x00\x00\x00\x18ftypmp42", headers=grant["headers"])
    assert put.status_code == 200, put.text
    assert runtime.watcher.tick() == 1
    found = runtime.store.find_clip(grant["key"])
    assert (found.tenant, found.camera) == ("tenant-a", "door")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_finished_runs_stream_as_server_sent_events(world: dict[str, Any]) -> None:
    from orchestrator.cli import start_api

    runtime = world["runtime"]
    runtime.settings = runtime.settings.model_copy(
        update={
            "api": runtime.settings.api.model_copy(
                update={"port": _free_port(), "events_poll_seconds": 0.1}
            )
        }
    )
    server = start_api(runtime)
    base = f"http://127.0.0.1:{runtime.settings.api.port}"
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    events: list[dict[str, Any]] = []

    def listen() -> None:
        with httpx.stream(
            "GET", f"{base}/v1/events", headers=world["keys"]["customer_a"], timeout=10
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line.removeprefix("data: ")))
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(0.5)
    _seed(runtime, "tenant-b", "gate2")  # another tenant's: must not arrive
    fresh = _seed(runtime, "tenant-a", "yard")
    listener.join(timeout=10)
    server.should_exit = True
    assert [e["clip_id"] for e in events] == [fresh.id]
    assert events[0]["status"] == "succeeded"
