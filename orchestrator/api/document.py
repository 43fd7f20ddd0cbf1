"""The OpenAPI document as served: FastAPI's, with what FastAPI cannot say by itself
and without what is not true of this API."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from orchestrator.api.problems import COMPONENTS, ProblemDetails

NULL = {"type": "null"}


def finish_document(
    document: dict[str, Any], also: Iterable[type[BaseModel]] = ()
) -> dict[str, Any]:
    """Fixes FastAPI's ``document`` in place, and returns it."""
    _declare_models(document, (ProblemDetails, *also))
    for path in document.get("paths", {}).values():
        for operation in path.values():
            _drop_default_validation_error(operation)
            for parameter in operation.get("parameters", []):
                parameter["schema"] = _never_null(parameter["schema"])
    schemas = document["components"]["schemas"]
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    return document


def _declare_models(document: dict[str, Any], models: Iterable[type[BaseModel]]) -> None:
    # The responses declared by hand (problems, the events' data) refer to these.
    _, definitions = models_json_schema(
        [(model, "serialization") for model in models], ref_template=COMPONENTS
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in definitions["$defs"].items():
        schemas.setdefault(name, schema)


def _drop_default_validation_error(operation: dict[str, Any]) -> None:
    # FastAPI declares a 422 of its own shape (HTTPValidationError) wherever it validates;
    # this API's 422s are problems, declared with the rest where they can happen.
    responses = operation.get("responses", {})
    body = responses.get("422", {}).get("content", {}).get("application/json")
    if body is not None and "HTTPValidationError" in str(body):
        del responses["422"]


def _never_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without the null FastAPI adds for `X | None = None`: a query
    parameter or a header that is not sent is absent; it is never null."""
    branches = schema.get("anyOf")
    if not branches or NULL not in branches:
        return schema
    rest = [branch for branch in branches if branch != NULL]
    outer = {k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)}
    return {**rest[0], **outer} if len(rest) == 1 else {**outer, "anyOf": rest}
