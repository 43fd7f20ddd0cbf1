"""The HTTP API. Every route is scoped to the caller's tenant; another tenant's clip
answers exactly as a clip that does not exist (404), so nothing leaks by probing."""

import asyncio
import base64
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from orchestrator.api import keys
from orchestrator.api.metrics import render_metrics
from orchestrator.cli_algorithms import version_json
from orchestrator.domain.algorithm import AlgorithmManifest
from orchestrator.domain.layout import upload_key
from orchestrator.engine.launches import clip_identity
from orchestrator.errors import CamflowError, NotFound
from orchestrator.service import Runtime, heartbeat_age, read_heartbeat
from orchestrator.store import ApiKey, Clip, Run
from orchestrator.store.models import Role, RunStatus, as_utc, iso

log = logging.getLogger("camflow.api")
#: Camera and tenant names in keys and paths: no slashes, no dots first, no surprises.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
PROBLEM = "application/problem+json"
#: Finished runs read per query by the event stream; it reads until it has them all.
EVENTS_PAGE = 200
MAX_EVENT_ID = 10**18 - 1


class Problem(HTTPException):
    """An error the caller can act on, sent as RFC 9457 problem details."""


def problem(status: int, detail: str, **extra: Any) -> JSONResponse:
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def _cursor(at: datetime, ident: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([iso(at), ident]).encode()).decode()


def _after(cursor: str | None) -> tuple[datetime, str] | None:
    if not cursor:
        return None
    try:
        at, ident = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(at.replace("Z", "+00:00")), str(ident)
    except (ValueError, TypeError):
        raise Problem(400, "the cursor is not one this API handed out: use `next` as is") from None


def _event_id(text: str) -> int:
    """Where a reconnecting client left off: the ``id`` of the last event it got."""
    if not re.fullmatch(r"[0-9]{1,18}", text.strip()):
        raise Problem(
            400, "Last-Event-ID must be the id of an event this stream sent (a whole number)"
        )
    return int(text.strip())


def _clip_json(clip: Clip) -> dict[str, Any]:
    return {
        "clip_id": clip.id,
        **clip_identity(clip),
        "recorded_at": iso(clip.recorded_at),
        "discovered_at": iso(clip.discovered_at),
    }


def _run_json(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "clip_id": run.clip_id,
        "pipeline": run.pipeline,
        "status": str(run.status),
        "error": run.error,
        "created_at": iso(run.created_at),
        "finished_at": iso(run.finished_at),
        "algorithms": run.algorithms,
    }


class UploadRequest(BaseModel):
    content_type: str = Field(default="video/mp4", pattern=r"^video/[a-z0-9.+-]+$")
    recorded_at: datetime | None = None


class AlgorithmRegistration(BaseModel):
    manifest: dict[str, Any]
    image_digest: str | None = None


def create_app(
    runtime: Runtime, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> FastAPI:
    settings, store, s3 = runtime.settings, runtime.store, runtime.s3
    app = FastAPI(
        title="camflow",
        version="0.1.0",
        openapi_url="/openapi.json",
        description="Cameras upload, customers read their results, authors manage "
        "algorithms. Authenticate with `Authorization: Bearer cfk_…`.",
    )

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"where": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()
        ]
        return problem(422, "the request does not match what this endpoint takes", errors=errors)

    @app.exception_handler(CamflowError)
    async def _camflow(_request: Request, exc: CamflowError) -> JSONResponse:
        return problem(404 if isinstance(exc, NotFound) else 400, str(exc))

    def caller(
        authorization: Annotated[str | None, Header()] = None,
        x_api_key: Annotated[str | None, Header()] = None,
    ) -> ApiKey:
        text = x_api_key or (authorization or "").removeprefix("Bearer ").strip()
        key = keys.verify(store, text) if text else None
        if key is None:
            raise Problem(401, "send a valid, unrevoked API key: Authorization: Bearer cfk_…")
        return key

    Caller = Annotated[ApiKey, Depends(caller)]

    def allow(key: ApiKey, *roles: Role) -> None:
        if key.role != Role.ADMIN and key.role not in roles:
            raise Problem(
                403,
                f"a {key.role} key cannot do this; it needs a "
                f"{' or '.join(r.value for r in roles)} key",
            )

    def owned_clip(key: ApiKey, clip_id: str) -> Clip:
        clip = None
        if re.fullmatch(r"c-[0-9a-f]{16}", clip_id):
            try:
                clip = store.find_clip(clip_id)
            except NotFound:
                clip = None
        if clip is None or (key.role != Role.ADMIN and clip.tenant != key.tenant):
            raise Problem(404, f"no clip {clip_id!r} in your tenant")
        return clip

    def presign(uri: str) -> str:
        bucket, object_key = uri.removeprefix("s3://").split("/", 1)
        return s3.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": bucket, "Key": object_key},
            ExpiresIn=settings.api.download_url_seconds,
        )

    # --- operations ---------------------------------------------------------------------

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    def readyz() -> JSONResponse:
        beat = read_heartbeat(settings.home)
        age = heartbeat_age(settings.home)
        store.counts()  # the store answers
        if beat is None or age is None or age > settings.api.ready_max_age_seconds:
            return problem(503, "the engine has not finished a tick recently")
        return JSONResponse(
            {
                "status": "ready",
                "engine_tick_age_seconds": round(age, 1),
                # What the last tick did, errors included (runs whose handling raised).
                "engine_tick": beat.get("tick"),
            }
        )

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        body, content_type = render_metrics(store, clock())
        return PlainTextResponse(body, media_type=content_type)

    # --- cameras ------------------------------------------------------------------------

    @app.post("/v1/cameras/{camera}/uploads", tags=["cameras"], status_code=201)
    def upload(camera: str, key: Caller, body: UploadRequest | None = None) -> dict[str, Any]:
        """A short-lived presigned PUT URL for one clip, under this camera's prefix."""
        allow(key, Role.CAMERA)
        if not NAME.match(camera):
            raise Problem(400, "a camera name is 1-63 letters, digits, '-' or '_'")
        if key.role == Role.CAMERA and key.camera != camera:
            raise Problem(403, f"this key uploads for camera {key.camera!r} only")
        request = body or UploadRequest()
        at = request.recorded_at or clock()
        object_key = upload_key(key.tenant, camera, at, n=secrets.randbelow(900_000) + 100_000)
        bucket = settings.s3.ingest_bucket
        url = s3.client.generate_presigned_url(
            "put_object",
            Params={"Bucket": bucket, "Key": object_key, "ContentType": request.content_type},
            ExpiresIn=settings.api.upload_url_seconds,
        )
        return {
            "method": "PUT",
            "url": url,
            "headers": {"Content-Type": request.content_type},
            "bucket": bucket,
            "key": object_key,
            "expires_in": settings.api.upload_url_seconds,
        }

    # --- customers ----------------------------------------------------------------------

    Limit = Annotated[int, Query(ge=1, le=500)]

    @app.get("/v1/clips", tags=["customers"])
    def clips(
        key: Caller,
        camera: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: Limit = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        allow(key, Role.CUSTOMER)
        found = store.tenant_clips(key.tenant, camera, since, until, _after(cursor), limit)
        last = found[-1] if len(found) == limit else None
        return {
            "items": [_clip_json(c) for c in found],
            "next": _cursor(as_utc(last.discovered_at), last.id) if last else None,
        }

    @app.get("/v1/runs", tags=["customers"])
    def runs(
        key: Caller,
        status: RunStatus | None = None,
        pipeline: str | None = None,
        camera: str | None = None,
        limit: Limit = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        allow(key, Role.CUSTOMER)
        found = store.tenant_runs(key.tenant, status, pipeline, camera, _after(cursor), limit)
        last = found[-1][0] if len(found) == limit else None
        return {
            "items": [_run_json(r) for r, _ in found],
            "next": _cursor(as_utc(last.created_at), last.id) if last else None,
        }

    @app.get("/v1/clips/{clip_id}", tags=["customers"])
    def clip(clip_id: str, key: Caller) -> dict[str, Any]:
        allow(key, Role.CUSTOMER)
        found = owned_clip(key, clip_id)
        return {**_clip_json(found), "runs": [_run_json(r) for r in store.runs_of_clip(found.id)]}

    @app.get("/v1/clips/{clip_id}/results", tags=["customers"])
    def results(clip_id: str, key: Caller) -> list[dict[str, Any]]:
        allow(key, Role.CUSTOMER)
        found = owned_clip(key, clip_id)
        return [
            r.result or {**_run_json(r), "note": "not finished yet"}
            for r in store.runs_of_clip(found.id)
        ]

    @app.get("/v1/clips/{clip_id}/artifacts", tags=["customers"])
    def artifacts(clip_id: str, key: Caller) -> list[dict[str, Any]]:
        """Presigned GET URLs for a clip's thumbnails and videos."""
        allow(key, Role.CUSTOMER)
        found = owned_clip(key, clip_id)
        signed = []
        for run in store.runs_of_clip(found.id):
            made = (run.result or {}).get("artifacts") or {}
            for item in made.get("thumbnails", []):
                signed.append(
                    {
                        "pipeline": run.pipeline,
                        "kind": "thumbnail",
                        "t": item["t"],
                        "url": presign(item["uri"]),
                    }
                )
            if made.get("anonymized_video"):
                signed.append(
                    {
                        "pipeline": run.pipeline,
                        "kind": "anonymized_video",
                        "url": presign(made["anonymized_video"]),
                    }
                )
        return signed

    @app.get("/v1/events", tags=["customers"])
    async def events(
        key: Caller,
        request: Request,
        since: datetime | None = None,
        after: Annotated[int | None, Query(ge=0, le=MAX_EVENT_ID)] = None,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """Server-sent events: one `run.finished` event per run of your tenant that ends,
        in the order they end. An event's `id` is its place in that order: reconnect
        with `Last-Event-ID` (EventSource does) or `?after=ID` to resume right after it,
        missing nothing however long you were away. A first connection starts now, or
        with the runs that finished at or after `since`. The stream ends, with a
        `key.revoked` event, once your key is revoked."""
        allow(key, Role.CUSTOMER)
        # The header wins: a reconnecting EventSource repeats the URL it was opened with.
        cursor = _event_id(last_event_id) if last_event_id else after
        start = as_utc(since) if since else None
        if cursor is None:
            cursor = 0 if start else await asyncio.to_thread(store.last_finished_seq)

        async def stream(position: int) -> AsyncIterator[str]:
            yield ": camflow events\n\n"
            while not await request.is_disconnected():
                # Checked at every poll, so that revoking a key also ends its streams.
                live = await asyncio.to_thread(store.api_key, key.id)
                if live is None or live.revoked_at is not None:
                    detail = {"detail": "this API key was revoked: the stream ends here"}
                    yield f"event: key.revoked\ndata: {json.dumps(detail)}\n\n"
                    return
                while True:  # every page that is there now, not just the first
                    rows = await asyncio.to_thread(
                        store.tenant_finished_runs, key.tenant, position, EVENTS_PAGE, start
                    )
                    for run, _clip in rows:
                        if run.finished_seq is None:
                            continue
                        position = run.finished_seq
                        yield (
                            f"id: {position}\nevent: run.finished\n"
                            f"data: {json.dumps(_run_json(run))}\n\n"
                        )
                    if len(rows) < EVENTS_PAGE:
                        break
                await asyncio.sleep(settings.api.events_poll_seconds)

        return StreamingResponse(stream(cursor), media_type="text/event-stream")

    # --- authors ------------------------------------------------------------------------

    def visible(key: ApiKey, owner: str | None) -> bool:
        return key.role == Role.ADMIN or owner is None or owner == key.tenant

    @app.get("/v1/algorithms", tags=["authors"])
    def algorithms(key: Caller) -> list[dict[str, Any]]:
        allow(key, Role.AUTHOR)
        return [version_json(r) for r in store.algorithm_versions() if visible(key, r.owner)]

    @app.get("/v1/algorithms/{name}", tags=["authors"])
    def algorithm(name: str, key: Caller) -> list[dict[str, Any]]:
        allow(key, Role.AUTHOR)
        rows = [r for r in store.algorithm_versions(name) if visible(key, r.owner)]
        if not rows:
            raise Problem(404, f"no algorithm {name!r} that you can see")
        return [version_json(r) for r in rows]

    @app.post("/v1/algorithms", tags=["authors"], status_code=201)
    def register(body: AlgorithmRegistration, key: Caller) -> dict[str, Any]:
        allow(key, Role.AUTHOR)
        try:
            manifest = AlgorithmManifest.model_validate(body.manifest)
        except ValueError as exc:
            raise Problem(422, f"not a valid algorithm manifest: {exc}") from None
        others = {r.owner for r in store.algorithm_versions(manifest.name)}
        if others and others != {key.tenant} and key.role != Role.ADMIN:
            raise Problem(
                403, f"the name {manifest.name!r} belongs to someone else: choose another"
            )
        row, created = runtime.registry.register_manifest(
            manifest, body.image_digest, owner=key.tenant
        )
        return {**version_json(row), "created": created}

    @app.post("/v1/algorithms/{name}/versions/{version}/promote", tags=["authors"])
    def promote(name: str, version: str, key: Caller) -> dict[str, Any]:
        allow(key, Role.AUTHOR)
        row = store.get_algorithm_version(f"{name}@{version}")
        if row is None or not visible(key, row.owner):
            raise Problem(404, f"no algorithm version {name}@{version} that you can see")
        if row.owner != key.tenant and key.role != Role.ADMIN:
            raise Problem(403, f"{row.id} is not your tenant's to promote")
        return version_json(runtime.registry.promote(name, version))

    from orchestrator.api.dashboard import router as dashboard

    app.include_router(dashboard(store, presign, clock))
    return app
