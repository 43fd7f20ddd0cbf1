"""``GET /v1/exports``: a camera's detections over a time range, streamed as JSONL or
CSV (orchestrator.exports). Checked before the first byte goes out, so that every
refusal is a problem with its own status, never a stream cut short."""

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter, ValidationError

from orchestrator.api.problems import Problem, problems
from orchestrator.api.schemas import Timestamp
from orchestrator.domain.layout import NAME
from orchestrator.exports import (
    FORMATS,
    MEDIA_TYPES,
    ExportQuery,
    camera_known,
    export_lines,
    file_name,
)
from orchestrator.exports.lines import ExportFormat
from orchestrator.exports.query import ExportError
from orchestrator.store import ApiKey, Store
from orchestrator.store.models import Role

_timestamp: TypeAdapter[datetime] = TypeAdapter(Timestamp)

#: The 200's bodies as the OpenAPI document declares them.
STREAMS: dict[str, Any] = {
    "description": "The lines, streamed: one per detection, and one with empty "
    "detection fields for a frame where nothing was found",
    "headers": {
        "Content-Disposition": {
            "description": "attachment, with a file name that says the camera and range",
            "schema": {"type": "string"},
        }
    },
    "content": {
        MEDIA_TYPES["jsonl"].split(";")[0]: {"schema": {"type": "string"}},
        MEDIA_TYPES["csv"].split(";")[0]: {"schema": {"type": "string"}},
    },
}


def _time(name: str, text: str | None) -> datetime | None:
    # Read here rather than by FastAPI, so that a malformed time is a 400 that names it.
    if text is None:
        return None
    try:
        return _timestamp.validate_python(text)
    except ValidationError as exc:
        why = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise Problem(400, f"{name}: {why}") from None


def router(
    store: Store,
    caller: Callable[..., ApiKey],
    allow: Callable[..., None],
) -> APIRouter:
    """The export route, authenticated by the app's ``caller`` and ``allow``."""
    api = APIRouter()
    Caller = Annotated[ApiKey, Depends(caller)]
    time_param = {"format": "date-time"}

    @api.get(
        "/v1/exports",
        tags=["customers"],
        response_class=StreamingResponse,
        responses={200: STREAMS, **problems(400, 401, 403, 404, 422)},
    )
    def export(
        key: Caller,
        camera: Annotated[
            str,
            Query(
                description="The camera (required)",
                json_schema_extra={"pattern": NAME.pattern},
            ),
        ],
        since: Annotated[
            str | None,
            Query(
                description="RFC 3339 with an offset; clips recorded at or after it",
                json_schema_extra=time_param,
            ),
        ] = None,
        until: Annotated[
            str | None,
            Query(
                description="RFC 3339 with an offset; clips recorded before it",
                json_schema_extra=time_param,
            ),
        ] = None,
        fmt: Annotated[
            str, Query(alias="format", json_schema_extra={"enum": list(FORMATS)})
        ] = "jsonl",
        pipeline: Annotated[str | None, Query(description="Only this pipeline's runs")] = None,
    ) -> StreamingResponse:
        """Your camera's detections, streamed: every succeeded run of clips the camera
        recorded in [since, until), oldest first. A line per detection (`time`, the
        camera, clip, key, run, pipeline, `t` into the clip, `label`, `score`, and the
        box `[x, y, w, h]` in pixels of the original frame; CSV has `x, y, w, h`
        columns), and one with empty detection fields for a frame where nothing was
        found. However long the range, the server holds one run at a time."""
        allow(key, Role.CUSTOMER)
        start, end = _time("since", since), _time("until", until)
        if fmt not in FORMATS:
            raise Problem(400, f"format {fmt!r} is not one of: {', '.join(FORMATS)}")
        try:
            query = ExportQuery(
                tenant=key.tenant, camera=camera, since=start, until=end, pipeline=pipeline
            )
        except ExportError as exc:
            raise Problem(400, str(exc)) from None
        if not camera_known(store, key.tenant, camera):
            raise Problem(404, f"no camera {camera!r} in your tenant: it has uploaded nothing")
        chosen: ExportFormat = "csv" if fmt == "csv" else "jsonl"
        name = file_name(camera, start, end, chosen)
        return StreamingResponse(
            export_lines(store, query, chosen),
            media_type=MEDIA_TYPES[chosen],
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    return api
