"""The API against its own OpenAPI document. Schemathesis generates requests from the
document, valid and invalid ones, and runs every check it has on each answer: no 5xx,
and each status, content type, header and body the one the document declares."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from schemathesis import Case
from schemathesis.schemas import BaseSchema

from orchestrator.api.app import create_app
from orchestrator.api.keys import create_key
from orchestrator.service import open_runtime, write_heartbeat
from orchestrator.settings import Settings
from orchestrator.store.models import Role
from tests.api_world import seed_clip

#: What schemathesis expects of a request that its document says is valid (its default)…
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]


def _also_accepted(status: str) -> dict[str, object]:
    return {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, status]}}


def _config(key: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": 20260301,
            "generation": {"max-examples": 15},
            "auth": {"openapi": {"bearer": {"bearer": key}}},
            "operations": [
                # …and what these operations may answer besides: a cursor is opaque, so
                # a well-formed one that this API never handed out is a 400; an export's
                # range whose `since` is not before its `until` is a 400 too.
                {
                    "include-path": [
                        "/v1/clips",
                        "/v1/runs",
                        "/v1/exports",
                        "/v1/webhook-deliveries",
                    ],
                    "checks": _also_accepted("400"),
                },
                # A manifest is refused (422) for what no schema can say: a version that
                # is not SemVer, a quantity Kubernetes cannot parse, a params schema that
                # is not JSON Schema.
                # (By name: schemathesis ORs include-path with include-method, which
                # made this entry every POST's.)
                {"include-name": "POST /v1/algorithms", "checks": _also_accepted("422")},
                # A webhook URL that is well formed may still be refused (400): one that
                # does not resolve, or reaches an address that is not public (SSRF).
                {"include-name": "POST /v1/webhook-endpoints", "checks": _also_accepted("400")},
                # The stream never ends: an answer is its first event, or what came in 0.3 s.
                {"include-path": "/v1/events", "request-timeout": 0.3, "max-stream-events": 1},
            ],
        }
    )


@pytest.fixture(params=[Role.CUSTOMER, Role.ADMIN])
def api_document(request: pytest.FixtureRequest, settings: Settings) -> Iterator[BaseSchema]:
    """The API of a store with two tenants' clips, as seen with a key of one role."""
    # schemathesis 4.32's from_fixture renames the test by its `_nodeid`, which pytest 9
    # no longer has (its `nodeid` is a property now).
    request.node._nodeid = request.node.nodeid
    with open_runtime(settings) as runtime:
        seed_clip(runtime, "tenant-a", "door")
        seed_clip(runtime, "tenant-b", "gate")
        write_heartbeat(settings.home)  # /readyz answers 200, not 503
        _, key = create_key(runtime.store, "tenant-a", request.param)
        app = create_app(runtime)
        yield schemathesis.openapi.from_asgi("/openapi.json", app, config=_config(key))


document = schemathesis.pytest.from_fixture("api_document")


@document.parametrize()
def test_every_answer_is_what_the_document_says(case: Case) -> None:
    response = case.call_and_validate()
    # Said outright, though schemathesis's not_a_server_error check says it too.
    assert response.status_code < 500, (case.method, case.path, response.text)


def test_every_operation_of_the_document_is_fuzzed(settings: Settings) -> None:
    """The operations come from the document, not from a list here: one added to the
    API is fuzzed as it lands, and nothing in the configuration leaves one out."""
    with open_runtime(settings) as runtime:
        app = create_app(runtime)
        documented = {
            (method.upper(), path)
            for path, item in app.openapi()["paths"].items()
            for method in item
        }
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=_config("cfk_x"))
        fuzzed = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert fuzzed == documented
    assert {
        ("POST", "/v1/cameras/{camera}/uploads"),
        ("GET", "/v1/clips/{clip_id}/artifacts"),
    } <= fuzzed
