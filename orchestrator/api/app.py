"""The HTTP API. Every route is scoped to the caller's tenant; another tenant's clip
answers exactly as a clip that does not exist (404), so nothing leaks by probing."""

import asyncio
import logging
import re
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException

from orchestrator.api import exports, keys, schemas, webhooks
from orchestrator.api.artifacts import run_folder, sort_artifacts
from orchestrator.api.cursors import (
    CURSOR_MAX_LENGTH,
    CURSOR_PATTERN,
    LAST_EVENT_ID_PATTERN,
    MAX_EVENT_ID,
    event_after,
    page_after,
    page_cursor,
)
from orchestrator.api.document import finish_document
from orchestrator.api.events import EVENT_DATA, EVENT_STREAM, StreamStart, finished_runs
from orchestrator.api.metrics import render_metrics
from orchestrator.api.problems import (
    CHALLENGE,
    FieldProblem,
    Problem,
    allowed_methods,
    problem_response,
    problems,
)
from orchestrator.api.security import presented_key
from orchestrator.api.sessions import DashboardSessions
from orchestrator.domain.layout import NAME, upload_key
from orchestrator.errors import CamflowError, NotFound
from orchestrator.operations import gpu_capacity
from orchestrator.registry import content_digest, version_json
from orchestrator.service import Runtime, heartbeat_age, read_heartbeat
from orchestrator.store import ApiKey, Clip, Run
from orchestrator.store.models import AlgorithmVersion, Role, RunStatus, as_utc

log = logging.getLogger("camflow.api")
#: Camera and tenant names in keys and paths: no slashes, no dots first, no surprises.
#: The errors every authenticated operation can answer.
AUTHENTICATED = (401, 403)


def create_app(
    runtime: Runtime,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    events_keepalive_seconds: float | None = None,
) -> FastAPI:
    settings, store, s3 = runtime.settings, runtime.store, runtime.s3
    if events_keepalive_seconds is None:
        events_keepalive_seconds = settings.api.events_keepalive_seconds
    app = FastAPI(
        title="camflow",
        version="0.1.0",
        openapi_url="/openapi.json",
        description="Cameras upload, customers read their results, authors manage "
        "algorithms. Authenticate with `Authorization: Bearer cfk_…` (or `X-API-Key`). "
        "Every error is problem details (`application/problem+json`).",
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)
            app.openapi_schema = finish_document(document, also=EVENT_DATA.values())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(app.routes, request.scope)
        return problem_response(
            exc.status_code, str(exc.detail), instance=request.url.path, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            FieldProblem(where=".".join(str(p) for p in e["loc"]), problem=e["msg"])
            for e in exc.errors()
        ]
        # A malformed query parameter (a time, a cursor, a limit) is a bad request: 400.
        # A body that does not match the schema is 422, as before.
        parts = {str(e["loc"][0]) for e in exc.errors() if e.get("loc")}
        return problem_response(
            400 if parts and parts <= {"query"} else 422,
            "the request does not match what this endpoint takes",
            instance=request.url.path,
            errors=errors,
        )

    @app.exception_handler(CamflowError)
    async def _camflow(request: Request, exc: CamflowError) -> JSONResponse:
        status = 404 if isinstance(exc, NotFound) else 400
        return problem_response(status, str(exc), instance=request.url.path)

    def caller(text: Annotated[str | None, Depends(presented_key)]) -> ApiKey:
        key = keys.verify(store, text) if text else None
        if key is None:
            raise Problem(
                401,
                "send a valid, unrevoked API key: Authorization: Bearer cfk_…",
                headers=CHALLENGE,
            )
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

    def signed_artifacts(run: Run, clip: Clip) -> list[schemas.Artifact]:
        """Presigned GETs for what ``run``'s result names under its own results; the
        rest is listed as withheld, with why (see orchestrator.api.artifacts)."""
        folder = run_folder(clip.tenant, clip.camera, clip.id, run.pipeline)
        made = (run.result or {}).get("artifacts")
        signable, refused = sort_artifacts(made, settings.s3.results_bucket, folder)
        signed: list[schemas.Artifact] = []
        for item in signable:
            url = s3.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": item.bucket, "Key": item.key},
                ExpiresIn=settings.api.download_url_seconds,
            )
            if item.t is not None:
                signed.append(schemas.Thumbnail(pipeline=run.pipeline, t=item.t, url=url))
            else:
                signed.append(schemas.AnonymizedVideo(pipeline=run.pipeline, url=url))
        for withheld in refused:
            log.warning("run %s: %s %s: not signed", run.id, withheld.kind, withheld.reason)
            signed.append(
                schemas.WithheldArtifact(
                    pipeline=run.pipeline, reason=f"{withheld.kind}: {withheld.reason}"
                )
            )
        return signed

    # --- operations ---------------------------------------------------------------------

    @app.get("/healthz", tags=["operations"])
    def healthz() -> schemas.Health:
        return schemas.Health()

    @app.get("/readyz", tags=["operations"], responses=problems(503))
    def readyz() -> schemas.Readiness:
        beat = read_heartbeat(settings.home)
        age = heartbeat_age(settings.home)
        store.ping()  # the store answers (a count of every row was a scan per probe)
        if beat is None or age is None or age > settings.api.ready_max_age_seconds:
            raise Problem(503, "the engine has not finished a tick recently")
        # What the last tick did, errors included (runs whose handling raised).
        return schemas.Readiness(
            engine_tick_age_seconds=round(age, 1), engine_tick=beat.get("tick")
        )

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        body, content_type = render_metrics(store, clock(), gpu_capacity(settings))
        return PlainTextResponse(body, media_type=content_type)

    # --- cameras ------------------------------------------------------------------------

    CameraName = Annotated[
        str,
        # Checked below rather than by FastAPI, so that a bad name stays a 400.
        Path(json_schema_extra={"pattern": NAME.pattern}),
    ]

    @app.post(
        "/v1/cameras/{camera}/uploads",
        tags=["cameras"],
        status_code=201,
        # 404: a name with a slash names no route.
        responses=problems(400, *AUTHENTICATED, 404, 422),
    )
    def upload(
        camera: CameraName, key: Caller, body: schemas.UploadRequest | None = None
    ) -> schemas.UploadGrant:
        """A short-lived presigned POST for one clip, under this camera's prefix: that
        key only, at most `api.upload_max_bytes`, the content type asked for."""
        allow(key, Role.CAMERA)
        if not NAME.fullmatch(camera):
            raise Problem(400, "a camera name is 1-63 letters, digits, '-' or '_'")
        if key.role == Role.CAMERA and key.camera != camera:
            raise Problem(403, f"this key uploads for camera {key.camera!r} only")
        request = body or schemas.UploadRequest()
        at = request.recorded_at or clock()
        object_key = upload_key(key.tenant, camera, at, n=secrets.randbelow(900_000) + 100_000)
        bucket, limit = settings.s3.ingest_bucket, settings.api.upload_max_bytes
        # A POST policy, unlike a presigned PUT, can bound the size. boto3 adds the
        # bucket and this exact key (no starts-with) to the conditions itself.
        post = s3.client.generate_presigned_post(
            Bucket=bucket,
            Key=object_key,
            Fields={"Content-Type": request.content_type},
            Conditions=[
                {"Content-Type": request.content_type},
                ["content-length-range", 1, limit],
            ],
            ExpiresIn=settings.api.upload_url_seconds,
        )
        return schemas.UploadGrant(
            url=post["url"],
            fields=post["fields"],
            bucket=bucket,
            key=object_key,
            max_bytes=limit,
            expires_in=settings.api.upload_url_seconds,
        )

    # --- customers ----------------------------------------------------------------------

    Limit = Annotated[int, Query(ge=1, le=500)]
    Cursor = Annotated[
        str | None,
        Query(
            description="Opaque: the `next` of the previous page, as is. Anything else is a 400.",
            max_length=CURSOR_MAX_LENGTH,
            pattern=CURSOR_PATTERN,
        ),
    ]
    LISTING_PROBLEMS = problems(400, *AUTHENTICATED, 422)
    CLIP_PROBLEMS = problems(*AUTHENTICATED, 404)

    @app.get("/v1/clips", tags=["customers"], responses=LISTING_PROBLEMS)
    def clips(
        key: Caller,
        camera: str | None = None,
        since: schemas.Timestamp | None = None,
        until: schemas.Timestamp | None = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> schemas.ClipPage:
        allow(key, Role.CUSTOMER)
        found = store.tenant_clips(key.tenant, camera, since, until, page_after(cursor), limit)
        last = found[-1] if len(found) == limit else None
        return schemas.ClipPage(
            items=[schemas.Clip.of(c) for c in found],
            next=page_cursor(as_utc(last.discovered_at), last.id) if last else None,
        )

    @app.get("/v1/runs", tags=["customers"], responses=LISTING_PROBLEMS)
    def runs(
        key: Caller,
        status: RunStatus | None = None,
        pipeline: str | None = None,
        camera: str | None = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> schemas.RunPage:
        allow(key, Role.CUSTOMER)
        found = store.tenant_runs(key.tenant, status, pipeline, camera, page_after(cursor), limit)
        last = found[-1][0] if len(found) == limit else None
        return schemas.RunPage(
            items=[schemas.Run.of(r) for r, _ in found],
            next=page_cursor(as_utc(last.created_at), last.id) if last else None,
        )

    @app.get("/v1/clips/{clip_id}", tags=["customers"], responses=CLIP_PROBLEMS)
    def clip(clip_id: str, key: Caller) -> schemas.ClipWithRuns:
        allow(key, Role.CUSTOMER)
        found = owned_clip(key, clip_id)
        return schemas.ClipWithRuns(
            **schemas.Clip.of(found).model_dump(),
            runs=[schemas.Run.of(r) for r in store.runs_of_clip(found.id)],
        )

    @app.get(
        "/v1/clips/{clip_id}/results",
        tags=["customers"],
        responses=CLIP_PROBLEMS,
        # A result.json holds what its stages published: no keys of our own added.
        response_model_exclude_unset=True,
    )
    def results(clip_id: str, key: Caller) -> list[schemas.PendingRun | schemas.RunResult]:
        """Each run's result.json, or what is known of a run that has not finished."""
        allow(key, Role.CUSTOMER)
        found = owned_clip(key, clip_id)
        return [
            schemas.RunResult.model_validate(r.result)
            if r.result
            # `note` given, not defaulted, so that exclude_unset keeps it.
            else schemas.PendingRun(**schemas.Run.of(r).model_dump(), note="not finished yet")
            for r in store.runs_of_clip(found.id)
        ]

    @app.get("/v1/clips/{clip_id}/artifacts", tags=["customers"], responses=CLIP_PROBLEMS)
    def artifacts(clip_id: str, key: Caller) -> list[schemas.Artifact]:
        """Presigned GET URLs for a clip's thumbnails and videos. Only objects under
        each run's own results are signed; anything else a result names is listed as
        `withheld`, with the reason."""
        allow(key, Role.CUSTOMER)
        found = owned_clip(key, clip_id)
        return [a for run in store.runs_of_clip(found.id) for a in signed_artifacts(run, found)]

    async def event_start(
        key: Caller,
        since: schemas.Timestamp | None = None,
        after: Annotated[int | None, Query(ge=0, le=MAX_EVENT_ID)] = None,
        last_event_id: Annotated[
            str | None,
            # Checked by event_after rather than by FastAPI, so that a bad id is a 400.
            Header(json_schema_extra={"pattern": LAST_EVENT_ID_PATTERN}),
        ] = None,
    ) -> StreamStart:
        """Who listens and from where: refused here, before the stream opens, with a
        status of its own."""
        allow(key, Role.CUSTOMER)
        # The header wins: a reconnecting EventSource repeats the URL it was opened with.
        position = event_after(last_event_id) if last_event_id else after
        if position is None:
            position = 0 if since else await asyncio.to_thread(store.last_finished_seq)
        return StreamStart(key, position, since)

    @app.get(
        "/v1/events",
        tags=["customers"],
        response_class=EventSourceResponse,
        responses={**problems(400, *AUTHENTICATED, 422), 200: EVENT_STREAM},
    )
    async def events(
        start: Annotated[StreamStart, Depends(event_start)],
    ) -> AsyncIterator[ServerSentEvent]:
        """Server-sent events: one `run.finished` event per run of your tenant that ends,
        in the order they end. An event's `id` is its place in that order: reconnect
        with `Last-Event-ID` (EventSource does) or `?after=ID` to resume right after it,
        missing nothing however long you were away. A first connection starts now, or
        with the runs that finished at or after `since`. An idle stream sends a `ping`
        comment every so often. The stream ends, with a `key.revoked` event, once your
        key is revoked."""
        poll = settings.api.events_poll_seconds
        async for event in finished_runs(store, start, poll, events_keepalive_seconds):
            yield event

    # --- authors ------------------------------------------------------------------------

    def visible(key: ApiKey, owner: str | None, published: bool = False) -> bool:
        return key.role == Role.ADMIN or owner is None or owner == key.tenant or published

    def described(row: AlgorithmVersion) -> schemas.AlgorithmVersion:
        # The CLI's `--json` builds the same object.
        return schemas.AlgorithmVersion.model_validate(version_json(row))

    @app.get("/v1/algorithms", tags=["authors"], responses=problems(*AUTHENTICATED))
    def algorithms(key: Caller) -> list[schemas.AlgorithmVersion]:
        allow(key, Role.AUTHOR)
        return [
            described(r) for r in store.algorithm_versions() if visible(key, r.owner, r.published)
        ]

    @app.get("/v1/algorithms/{name}", tags=["authors"], responses=problems(*AUTHENTICATED, 404))
    def algorithm(name: str, key: Caller) -> list[schemas.AlgorithmVersion]:
        allow(key, Role.AUTHOR)
        rows = [r for r in store.algorithm_versions(name) if visible(key, r.owner, r.published)]
        if not rows:
            raise Problem(404, f"no algorithm {name!r} that you can see")
        return [described(r) for r in rows]

    @app.post(
        "/v1/algorithms",
        tags=["authors"],
        status_code=201,
        responses=problems(400, *AUTHENTICATED, 409, 422),
    )
    def register(body: schemas.AlgorithmRegistration, key: Caller) -> schemas.RegisteredAlgorithm:
        allow(key, Role.AUTHOR)
        manifest = body.manifest
        # An author registers for its own tenant only; an admin may name any.
        tenant = body.tenant or key.tenant
        if tenant != key.tenant and key.role != Role.ADMIN:
            raise Problem(
                403,
                f"an author key registers algorithms for its own tenant ({key.tenant!r}) "
                f"only, not {tenant!r}: leave `tenant` out",
            )
        known = store.algorithm_versions(manifest.name)
        others = {r.owner for r in known}
        if others and others != {tenant} and key.role != Role.ADMIN:
            raise Problem(
                403, f"the name {manifest.name!r} belongs to someone else: choose another"
            )
        if key.role != Role.ADMIN and _followed_by_all(known, manifest.version):
            raise Problem(403, _FOLLOWED_BY_ALL.format(name=manifest.name))
        existing = store.get_algorithm_version(manifest.ref)
        digest = content_digest(manifest, body.image_digest, body.image_digests)
        if existing and existing.content_digest != digest:
            raise Problem(
                409,
                f"{manifest.ref} is registered already with other content: versions are "
                "immutable, so register this one under a new version",
            )
        row, created = runtime.registry.register_manifest(
            manifest, body.image_digest, owner=tenant, image_digests=body.image_digests
        )
        return schemas.RegisteredAlgorithm(**described(row).model_dump(), created=created)

    @app.post(
        "/v1/algorithms/{name}/versions/{version}/promote",
        tags=["authors"],
        responses=problems(*AUTHENTICATED, 404),
    )
    def promote(name: str, version: str, key: Caller) -> schemas.AlgorithmVersion:
        allow(key, Role.AUTHOR)
        row = store.get_algorithm_version(f"{name}@{version}")
        if row is None or not visible(key, row.owner, row.published):
            raise Problem(404, f"no algorithm version {name}@{version} that you can see")
        if row.owner != key.tenant and key.role != Role.ADMIN:
            raise Problem(403, f"{row.id} is not your tenant's to promote")
        versions = store.algorithm_versions(name)
        if key.role != Role.ADMIN and not row.published and _followed_by_all(versions, version):
            raise Problem(403, _FOLLOWED_BY_ALL.format(name=name))
        return described(runtime.registry.promote(name, version))

    @app.post(
        "/v1/algorithms/{name}/versions/{version}/publish",
        tags=["authors"],
        responses=problems(*AUTHENTICATED, 404),
    )
    def publish(name: str, version: str, key: Caller) -> schemas.AlgorithmVersion:
        """Admins only: lets every tenant's clips run this version. Until then an
        author's version runs only on its own tenant's clips."""
        allow(key, Role.ADMIN)
        return described(runtime.registry.publish(name, version))

    from orchestrator.api.dashboard import router as dashboard

    sessions = DashboardSessions(
        store, settings.api.session_seconds, settings.api.secure_cookies, clock
    )
    app.include_router(
        dashboard(store, signed_artifacts, clock, sessions, gpu_slots=gpu_capacity(settings))
    )
    app.include_router(exports.router(store, caller, allow))
    app.include_router(webhooks.router(store, settings.webhooks, caller, clock))
    return app


#: Why an author may not move a name other tenants' pipelines follow.
_FOLLOWED_BY_ALL = (
    "{name!r} has versions an admin published for every tenant, so other tenants' "
    "pipelines follow its channels: an unpublished version there would stop their "
    "clips. Ask an admin to register, publish or promote it, or use a new name"
)


def _followed_by_all(versions: Sequence[AlgorithmVersion], version: str) -> bool:
    """Some other version of the name is published: its channels are everyone's."""
    return any(v.published and v.version != version for v in versions)
