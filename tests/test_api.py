"""The HTTP API: isolation between tenants and roles is tested, not assumed."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from unittest.mock import ANY

import httpx
import pytest
from fastapi.testclient import TestClient

from orchestrator.api.app import create_app
from orchestrator.api.keys import create_key, revoke
from orchestrator.api.problems import PROBLEM
from orchestrator.domain.catalog import load_algorithm
from orchestrator.domain.layout import clip_id, upload_key
from orchestrator.registry import version_json
from orchestrator.service import open_runtime, write_heartbeat
from orchestrator.settings import PROJECT_ROOT, Settings
from orchestrator.store import Clip
from orchestrator.store.models import Role
from tests.api_world import T0, seed_clip


@pytest.fixture
def world(settings: Settings) -> Iterator[dict[str, Any]]:
    with open_runtime(settings) as runtime:
        clips = {
            "a": seed_clip(runtime, "tenant-a", "door"),
            "b": seed_clip(runtime, "tenant-b", "gate"),
        }
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


def _text(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def test_a_key_is_taken_as_bearer_in_any_case_or_as_x_api_key(world: dict[str, Any]) -> None:
    client, text = world["client"], _text(world["keys"]["customer_a"])
    for headers in (
        {"Authorization": f"bearer {text}"},
        {"Authorization": f"BEARER {text}"},
        {"X-API-Key": text},
    ):
        assert client.get("/v1/clips", headers=headers).status_code == 200, headers
    refused = client.get("/v1/clips", headers={"Authorization": f"Basic {text}"})
    assert _problem(refused, 401)["instance"] == "/v1/clips"
    assert refused.headers["www-authenticate"] == "Bearer"


def test_the_document_declares_the_key_schemes_and_every_error(world: dict[str, Any]) -> None:
    spec = world["client"].get("/openapi.json").json()
    assert spec["components"]["securitySchemes"] == {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "cfk_<id>_<secret>",
            "description": ANY,
        },
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": ANY},
    }
    problem = {"$ref": "#/components/schemas/ProblemDetails"}
    assert {"type", "title", "status", "detail", "instance"} <= set(
        spec["components"]["schemas"]["ProblemDetails"]["properties"]
    )
    assert {"/healthz", "/v1/clips", "/v1/events", "/v1/algorithms"} <= set(spec["paths"])
    operations = [
        (path, method, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    ]
    for path, method, operation in operations:
        where = f"{method.upper()} {path}"
        named = {p["name"].lower() for p in operation.get("parameters", [])}
        assert not named & {"authorization", "x-api-key"}, where
        if path.startswith("/v1/"):
            assert operation["security"] == [{"bearer": []}, {"apiKey": []}], where
            assert {"401", "403"} <= set(operation["responses"]), where
        for status, response in operation["responses"].items():
            if status >= "400":
                assert response["content"] == {PROBLEM: {"schema": problem}}, (where, status)
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_a_method_a_path_lacks_is_a_405_that_names_those_it_has(world: dict[str, Any]) -> None:
    client, author = world["client"], world["keys"]["author_a"]
    response = client.delete("/v1/algorithms", headers=author)
    _problem(response, 405)
    assert response.headers["allow"] == "GET, POST"
    response = client.request("TRACE", "/healthz")
    _problem(response, 405)
    assert response.headers["allow"] == "GET"


def test_bodies_are_what_the_cli_prints_and_what_the_store_holds(world: dict[str, Any]) -> None:
    client, keys, runtime = world["client"], world["keys"], world["runtime"]
    listed = client.get("/v1/algorithms", headers=keys["admin"]).json()
    assert listed == [version_json(row) for row in runtime.store.algorithm_versions()]
    a = world["clips"]["a"]
    [run] = runtime.store.runs_of_clip(a.id)
    assert client.get(f"/v1/clips/{a.id}/results", headers=keys["customer_a"]).json() == [
        run.result
    ]


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
    # Versions as the algorithm files say (publish's is b-secret-sauce's too).
    b_version = world["manifest"].version
    faces_version = world["runtime"].store.algorithm_versions("faces")[0].version
    b_promote = f"/v1/algorithms/b-secret-sauce/versions/{b_version}/promote"
    _problem(client.post(b_promote, headers=author_a), 404)
    stolen = world["manifest"].model_copy(update={"name": "b-secret-sauce", "version": "9.0.0"})
    _problem(
        client.post(
            "/v1/algorithms", headers=author_a, json={"manifest": stolen.model_dump(mode="json")}
        ),
        403,
    )
    # Nor the operator's built-ins.
    _problem(
        client.post(f"/v1/algorithms/faces/versions/{faces_version}/promote", headers=author_a),
        403,
    )
    promoted = client.post(b_promote, headers=keys["author_b"])
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


def _encoded(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "abc",  # not base64
        "-_-_",  # base64 of no JSON
        _encoded([1, 2]),
        _encoded({"at": "2026-03-01T12:00:00Z"}),
        _encoded(["2026-03-01T12:00:00", "c-0"]),  # no offset
        _encoded(["0001-01-01T00:00:00+01:00", "c-0"]),  # before year 1 in UTC
        _encoded(["2026-03-01T12:00:00Z", "c-0", "extra"]),
    ],
)
def test_a_well_formed_cursor_this_api_never_handed_out_is_a_400(
    world: dict[str, Any], cursor: str
) -> None:
    for path in ("/v1/clips", "/v1/runs"):
        response = world["client"].get(
            path, params={"cursor": cursor}, headers=world["keys"]["customer_a"]
        )
        assert "cursor" in _problem(response, 400)["detail"]


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
    sent = httpx.post(
        grant["url"], data=grant["fields"], files={"file": b"\x00\x00\x00\x18ftypmp42"}
    )
    assert sent.status_code == 204, sent.text
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
    seed_clip(runtime, "tenant-b", "gate2")  # another tenant's: must not arrive
    fresh = seed_clip(runtime, "tenant-a", "yard")
    listener.join(timeout=10)
    server.should_exit = True
    assert [e["clip_id"] for e in events] == [fresh.id]
    assert events[0]["status"] == "succeeded"


def test_names_and_times_must_match_whole_not_up_to_a_trailing_newline(
    world: dict[str, Any],
) -> None:
    client, keys = world["client"], world["keys"]
    # `$` in a pattern matches before a final newline: these were accepted.
    _problem(client.post("/v1/cameras/door%0A/uploads", headers=keys["admin"]), 400)
    since = client.get("/v1/clips?since=2026-01-01T00:00:00Z%0A", headers=keys["customer_a"])
    _problem(since, 400)  # a malformed time is a bad request, not 500 and not 422
