"""Pipeline specs (``pipelines/*.yaml``): which clips, which stages, in what order."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    field_validator,
    model_validator,
)

from orchestrator.domain.algorithm import NAME_PATTERN, Accelerator
from orchestrator.domain.layout import NAME as TENANT_NAME

#: The input reference that means "the uploaded clip itself".
CLIP_INPUT = "clip"
#: ``tenants: "*"``: the pipeline serves every tenant.
EVERY_TENANT = "*"


class Trigger(BaseModel):
    """Which uploads start this pipeline: bucket (default: the ingest bucket), key
    prefix and suffix (case-insensitive)."""

    model_config = ConfigDict(extra="forbid")

    bucket: str | None = None
    prefix: str = ""
    suffix: str = ".mp4"

    def matches(self, bucket: str, key: str, default_bucket: str) -> bool:
        return (
            bucket == (self.bucket or default_bucket)
            and key.startswith(self.prefix)
            and key.lower().endswith(self.suffix.lower())
        )


class Placement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    accelerator: Accelerator = "cpu"
    #: Run on CPU instead when no GPU has been free for ``fallback_after_seconds``.
    fallback: Literal["cpu"] | None = None
    fallback_after_seconds: float = Field(default=300, ge=0)
    #: A CPU stage fused after a GPU stage runs in that stage's process (pod) on the
    #: GPU's node, still on CPU, instead of in a CPU process of its own: one process
    #: start, one Kubernetes Job and its Secret fewer per batch, for the GPU held while
    #: it runs. Worth it for light stages after a model (drawing, publishing).
    join_gpu: bool = False

    @model_validator(mode="after")
    def _join_gpu_is_for_cpu_stages(self) -> Placement:
        if self.join_gpu and self.accelerator != "cpu":
            raise ValueError("join_gpu is for CPU stages (accelerator: cpu)")
        return self


class BatchSpec(BaseModel):
    """How a stage's attempts are batched (for algorithms that take batches); unset
    fields take the engine's settings (engine.batch_max_size, batch_max_wait_seconds)."""

    model_config = ConfigDict(extra="forbid")

    #: Clips per process at most; 1 turns batching off for this stage.
    max_size: PositiveInt | None = None
    #: How long a ready attempt may wait for others to fill its batch.
    max_wait_seconds: float | None = Field(default=None, ge=0)


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    #: ``name`` or ``name@version``.
    algorithm: str = Field(min_length=1)
    #: Input name -> ``clip`` or the name of an earlier stage (its output prefix).
    inputs: dict[str, str] = Field(default_factory=dict)
    #: Extra ordering beyond what ``inputs`` implies.
    needs: list[str] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    placement: Placement = Field(default_factory=Placement)
    timeout_seconds: PositiveInt | None = None
    retries: NonNegativeInt | None = None
    batch: BatchSpec = Field(default_factory=BatchSpec)
    #: Run in one process (one pod) with the stages before and after it that have the
    #: same placement, where the executor can. False: always a process of its own.
    fuse: bool = True

    @property
    def depends_on(self) -> set[str]:
        refs = {ref for ref in self.inputs.values() if ref != CLIP_INPUT}
        return refs | set(self.needs)

    @property
    def algorithm_name(self) -> str:
        return self.algorithm.split("@", 1)[0]

    @property
    def algorithm_version(self) -> str | None:
        return self.algorithm.split("@", 1)[1] if "@" in self.algorithm else None


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    #: The tenants whose clips this pipeline runs on: a list of names, or "*" for every
    #: tenant. Pipeline files are the operator's (an admin's) to write, so this is an
    #: admin's decision. Left out, it is "*": pipelines written before tenancy keep
    #: running as they did, and an author's algorithm in one still runs only on its own
    #: tenant's clips unless published (the catalog checks each stage).
    tenants: list[str] | Literal["*"] = EVERY_TENANT
    trigger: Trigger = Field(default_factory=Trigger)
    stages: list[StageSpec] = Field(min_length=1)

    @field_validator("tenants", mode="before")
    @classmethod
    def _list_or_star(cls, tenants: Any) -> Any:
        if isinstance(tenants, str) and tenants != EVERY_TENANT:
            raise ValueError(
                f'{tenants!r}: write a list of tenant names ([acme, shop]), or "*" for every tenant'
            )
        return tenants

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, tenants: list[str] | str) -> list[str] | str:
        if isinstance(tenants, str):
            return tenants
        if not tenants:
            raise ValueError(
                'is empty: the pipeline would serve no one; list tenants, or write "*" '
                "for every tenant"
            )
        for tenant in tenants:
            if tenant == EVERY_TENANT:
                raise ValueError('"*" means every tenant: write `tenants: "*"`, not in a list')
            if not TENANT_NAME.fullmatch(tenant):
                raise ValueError(
                    f"{tenant!r} is not a tenant name (the first segment of an upload key: "
                    "letters, digits, _ and -)"
                )
        return sorted(set(tenants))

    def serves(self, tenant: str) -> bool:
        return self.tenants == EVERY_TENANT or tenant in self.tenants

    def graph_problem(self) -> tuple[str, str] | None:
        """The first (field, problem) in how stages refer to each other, if any."""
        names = [stage.name for stage in self.stages]
        seen: set[str] = set()
        for index, stage in enumerate(self.stages):
            if stage.name in seen:
                return f"stages[{index}].name", f"stage {stage.name!r} is defined twice"
            for ref in sorted(stage.depends_on):
                if ref not in names:
                    return (
                        f"stages[{index}].inputs",
                        f"stage {stage.name!r} refers to unknown stage {ref!r}; "
                        f"known: {[CLIP_INPUT, *names]}",
                    )
                if ref not in seen:
                    return (
                        f"stages[{index}].inputs",
                        f"stage {stage.name!r} needs {ref!r}, which must be listed before it "
                        "(stages run in dependency order)",
                    )
            seen.add(stage.name)
        return None

    def stage(self, name: str) -> StageSpec:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)
