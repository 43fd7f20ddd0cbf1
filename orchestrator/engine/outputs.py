"""What a stage wrote, checked against the stage contract before camflow trusts it.

A stage is a program camflow does not control: its manifest and its ``result`` output
are validated here, and anything wrong becomes one sentence that names the file and
the problem, which fails the attempt. Pure: the reading is the reconciler's.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from algorithms.contract import MANIFEST_NAME
from orchestrator.errors import ContentError, ObjectTooLarge

#: The output whose JSON object is merged into the clip's result.json.
RESULT_OUTPUT = "result"
_SHAPE = (
    'the stage contract wants an object like {"outputs": {"result": "result.json"}, '
    '"metrics": {"frames": 20}}, written last'
)


class StageManifest(BaseModel):
    """``_manifest.json``. Other keys are allowed: the SDK adds stage, run_id and
    accelerator, and a newer SDK may add more."""

    model_config = ConfigDict(strict=True, extra="allow")

    #: Output name -> object name under the stage's output prefix.
    outputs: dict[str, Annotated[str, Field(min_length=1, max_length=1024)]] = Field(
        default_factory=dict
    )
    metrics: dict[str, Any] = Field(default_factory=dict)


class BrokenContract(Exception):
    """What a stage wrote breaks the stage contract.

    ``permanent``: the same program on the same (ETag-pinned) input writes the same
    thing again, so a retry only burns compute and delays the failure; the fix is a
    new version of the stage.
    """

    def __init__(self, reason: str, permanent: bool = True) -> None:
        super().__init__(reason)
        self.reason, self.permanent = reason, permanent


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, in JSON's own words."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def human_bytes(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{f'{size / scale:.1f}'.removesuffix('.0')} {unit}"
    return f"{size} bytes"


def _where(location: tuple[int | str, ...]) -> str:
    # Keys come from the stage: a megabyte-long one must not make a megabyte reason.
    return ".".join(str(part)[:60] for part in location) or "the top level"


def unreadable(file: str, exc: ContentError, setting: str) -> BrokenContract:
    """A file the stage wrote that could not be read as JSON (too large, not JSON)."""
    if isinstance(exc, ObjectTooLarge):
        return BrokenContract(
            f"wrote a {human_bytes(exc.size)} {file}; the limit is "
            f"{human_bytes(exc.limit)} (engine.{setting})"
        )
    return BrokenContract(f"wrote a {file} that is not JSON ({exc})")


def check_manifest(raw: Any) -> StageManifest:
    if not isinstance(raw, dict):
        raise BrokenContract(
            f"wrote a {MANIFEST_NAME} that is {json_kind(raw)}, not an object; {_SHAPE}"
        )
    try:
        return StageManifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in exc.errors()[:3])
        raise BrokenContract(
            f"wrote a {MANIFEST_NAME} that breaks the contract: {problems}; {_SHAPE}"
        ) from None


def check_result(raw: Any, file: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BrokenContract(
            f"wrote a {file} (its {RESULT_OUTPUT!r} output) that is {json_kind(raw)}, not an "
            "object; the result output is merged into the clip's result.json, so it must be "
            "a JSON object"
        )
    return raw
