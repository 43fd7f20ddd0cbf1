"""Algorithm manifests (``algorithms/*/algorithm.yaml``): what a stage program needs."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal

import semver
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    field_validator,
    model_validator,
)

from orchestrator.errors import ParamsError

Accelerator = Literal["cpu", "gpu"]
NAME_PATTERN = r"^[a-z][a-z0-9-]{0,39}$"
#: The quantity grammar of Kubernetes' resource.Quantity (number, then a binary SI,
#: decimal SI or exponent suffix), in ASCII digits.
QUANTITY_PATTERN = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))"
    r"(?:[KMGTPE]i|[mkMGTPE]|[eE](?P<exponent>[+-]?[0-9]+))?"
)
#: The API server keeps an exponent as a 32-bit scale (apimachinery's suffix.go parses
#: 64 bits and truncates): one outside it would mean another amount than written.
EXPONENT_BOUND = 2**31


def _quantity(value: object) -> object:
    # YAML reads `cpu: 2` as a number; a Job spec carries the quantity as text.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _positive_quantity(value: str) -> str:
    """Refused here, a bad quantity would instead fail every Job created from it, on
    whichever clusters the stage is sent to. The grammar is checked here rather than
    with the Kubernetes client's parse_quantity: that takes what the API server does
    not (spaces, inf, Infinity), and importing it costs every command a quarter
    second (the whole client). Every suffix multiplies by a positive factor, so the
    number before it gives the sign."""
    match = QUANTITY_PATTERN.fullmatch(value)
    exponent = match and match["exponent"]
    if match is None or (exponent and not -EXPONENT_BOUND <= int(exponent) < EXPONENT_BOUND):
        raise ValueError(
            f"{value!r} is not a Kubernetes quantity: write e.g. 500m or 2 (cpu), "
            "512Mi or 2Gi (memory)"
        )
    if Decimal(match["number"]) <= 0:
        raise ValueError(f"{value!r} must be more than zero")
    return value


Quantity = Annotated[str, BeforeValidator(_quantity), AfterValidator(_positive_quantity)]


class Resources(BaseModel):
    """Requests (and equal limits) for one accelerator, in Kubernetes quantities."""

    model_config = ConfigDict(extra="forbid")

    cpu: Quantity = "500m"
    memory: Quantity = "512Mi"
    gpu: NonNegativeInt = 0
    #: An image built for this accelerator (e.g. with CUDA), instead of the default one.
    image: str | None = None


class AlgorithmManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    version: str
    description: str = ""
    image: str = Field(min_length=1)
    command: list[str] = Field(min_length=1)
    accelerators: dict[Accelerator, Resources] = Field(min_length=1)
    #: Input names the program reads from CAMFLOW_INPUTS; pipelines must provide them.
    inputs: list[str] = Field(default_factory=list)
    optional_inputs: list[str] = Field(default_factory=list)
    params_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    timeout_seconds: PositiveInt = 600
    #: Retries after a transient failure (exit code other than 0 and 2).
    retries: NonNegativeInt = 2
    #: The program takes several clips in one process (CAMFLOW_BATCH_FILE or
    #: CAMFLOW_BATCH, as the SDK's run_stage does), so camflow may batch its attempts;
    #: ``timeout_seconds`` is then per clip. False: one clip per process.
    batch: bool = False
    #: Its ``main(ctx)`` may run for several clips at once, on threads of one process
    #: (no state shared between calls but what is safe to share: a loaded model, a
    #: client). camflow then runs the batches of one stage that start together as one
    #: process whose threads take the clips as they free up: one interpreter, one model
    #: and no idle core while another batch still has clips. Needs ``batch``.
    thread_safe: bool = False
    #: Its outputs only feed later stages (decoded frames, say): run in one process with
    #: all the stages that read them (fused), it hands them over there and never writes
    #: them to S3. False: its outputs are results someone may fetch, always stored.
    intermediate: bool = False

    @property
    def fusable(self) -> bool:
        """It may run in one process with other stages: an SDK stage (it takes batches)
        started as ``python -m MODULE``, whose ``main(ctx)`` the SDK then calls."""
        command = self.command
        return (
            self.batch
            and len(command) == 3
            and command[:2]
            in (
                ["python", "-m"],
                ["python3", "-m"],
            )
        )

    @field_validator("version")
    @classmethod
    def _version_is_semver(cls, version: str) -> str:
        # The catalog orders versions by SemVer precedence, so anything it cannot parse
        # is refused here rather than guessed at (1.0 -> 1.0.0 would invent a version).
        if not semver.Version.is_valid(version):
            raise ValueError(
                f"{version!r} is not a SemVer 2.0 version: write MAJOR.MINOR.PATCH without "
                "leading zeros, optionally with -PRERELEASE and +BUILD "
                "(e.g. 1.0.0, 1.1.0-rc.1, 1.1.0+build.7)"
            )
        return version

    @model_validator(mode="after")
    def _threads_need_batches(self) -> AlgorithmManifest:
        if self.thread_safe and not self.batch:
            raise ValueError(
                "thread_safe: true needs batch: true (only the SDK's batch form runs "
                "clips on threads); declare both, or neither"
            )
        return self

    @field_validator("params_schema")
    @classmethod
    def _schema_is_valid(cls, schema: dict[str, Any]) -> dict[str, Any]:
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from exc
        return schema

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Returns ``params`` with schema defaults filled in, or raises ParamsError
        naming the JSON pointer of the first bad field."""
        merged = dict(params)
        for key, prop in (self.params_schema.get("properties") or {}).items():
            if key not in merged and isinstance(prop, dict) and "default" in prop:
                merged[key] = prop["default"]
        validator = Draft202012Validator(self.params_schema)
        errors = sorted(validator.iter_errors(merged), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            pointer = "".join(f"/{part}" for part in first.absolute_path)
            raise ParamsError(pointer, first.message)
        return merged
