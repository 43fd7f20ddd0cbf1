"""Problem details (RFC 9457): the one body every error of the API has, and how each
operation declares in the OpenAPI document the errors it can answer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

PROBLEM = "application/problem+json"
COMPONENTS = "#/components/schemas/{model}"


class Problem(HTTPException):
    """An error the caller can act on, sent as problem details."""


class FieldProblem(BaseModel):
    where: str = Field(description="The part of the request, dotted: `query.limit`")
    problem: str


class ProblemDetails(BaseModel):
    """What went wrong, as RFC 9457 problem details."""

    type: str = Field(default="about:blank", description="Always `about:blank`: see `title`")
    title: str = Field(description="The HTTP status's phrase")
    status: int = Field(ge=400, le=599)
    detail: str = Field(description="What was wrong with this request, and what to do instead")
    instance: str | None = Field(default=None, description="The path the request was sent to")
    errors: list[FieldProblem] | None = Field(
        default=None,
        description="With 400 or 422: each part of the request that was refused, and why",
    )


def problem_response(
    status: int,
    detail: str,
    *,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    errors: list[FieldProblem] | None = None,
) -> JSONResponse:
    body = ProblemDetails(
        title=HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=instance,
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=status,
        media_type=PROBLEM,
        headers=dict(headers or {}),
    )


#: What each status means in this API, as the OpenAPI document says it.
MEANINGS = {
    400: "The request is well formed but names something this API never handed out "
    "(a cursor, an event id, a camera name outside the pattern) or that it refuses",
    401: "No API key, or one that is unknown or revoked",
    403: "The key's role or tenant may not do this",
    404: "Nothing by that name that this key can see",
    409: "It exists already with other content",
    422: "The request does not match the schema: `errors` says where",
    503: "Not ready: the engine has not finished a tick recently",
}

#: Sent with every 401, as RFC 9110 asks.
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status an application/problem+json body."""
    declared: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        response: dict[str, Any] = {
            "description": MEANINGS[status],
            "content": {PROBLEM: {"schema": {"$ref": COMPONENTS.format(model="ProblemDetails")}}},
        }
        if status == 401:
            response["headers"] = {
                "WWW-Authenticate": {
                    "description": "The scheme to authenticate with",
                    "schema": {"type": "string"},
                    "required": True,
                }
            }
        declared[status] = response
    return declared


def allowed_methods(routes: Iterable[BaseRoute], scope: Scope) -> str:
    """The ``Allow`` header of a 405: every method of every route at this path (Starlette
    names only those of the first route that matched)."""
    methods: set[str] = set()
    for route in routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches({**scope, "method": next(iter(route.methods))})
            if match == Match.FULL:
                methods |= route.methods
    return ", ".join(sorted(methods))
