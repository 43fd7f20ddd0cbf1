"""The executor interface: the same for local processes and Kubernetes Jobs.

Submission is batch-shaped (a list of launches in, a handle per attempt out) so that
an executor may pack several short stage attempts into one unit of work later (an
Indexed Job with one index per clip) without the engine changing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, Field

from orchestrator.domain.algorithm import Accelerator, Resources
from orchestrator.errors import ExecutorError


class StageLaunch(BaseModel):
    """Everything an executor needs to start one stage attempt."""

    attempt_id: str
    run_id: str
    stage: str
    pipeline: str
    tenant: str
    clip_id: str
    algorithm: str  # name@version
    image: str
    command: list[str]
    #: The stage-contract variables (CAMFLOW_*); S3 access is the executor's business.
    env: dict[str, str]
    accelerator: Accelerator
    resources: Resources
    timeout_seconds: int
    #: Where the algorithm's code lives on this machine (local runs start there).
    workdir: str | None = None
    #: Retries an executor that retries by itself (a Job's backoffLimit) may make.
    retries: int = 0
    #: The algorithm version's channel: dev versions run on dev clusters, stable on prod.
    channel: str = "dev"
    #: Where a GPU attempt may run instead if the executor has no GPU for it.
    fallback: Accelerator | None = None
    #: The stage's own fallback and wait (``placement``), for an executor that sees a
    #: GPU attempt queued for a node no one can give it: after the wait it may move it.
    queued_fallback: Accelerator | None = None
    fallback_after_seconds: float | None = None
    #: Where it must go, as ``place`` chose and the store recorded before the create:
    #: a retried create goes to the same place, never a second one. None: choose now.
    placement: str | None = None
    #: Launches of one submit that share a batch id run together, in one process (an
    #: executor with ``batches``); None: on its own. The engine groups only attempts of
    #: one stage with the same algorithm version, params and accelerator.
    batch: str | None = None
    #: The batch this attempt was recorded in, when it is submitted on its own (a
    #: Resubmit: the engine stopped, or the batch's submit failed, before its handle
    #: was recorded). An executor that names its unit of work after the batch (one
    #: Indexed Job per batch) looks there first, so that the attempt never runs twice.
    recorded_batch: str | None = None
    #: Its algorithm's main(ctx) may run clips side by side on threads of one process
    #: (``thread_safe`` in its manifest).
    thread_safe: bool = False
    #: Fused stages: the launches of this clip's later stages that run after this one
    #: in the same execution (one process, one pod), in order; each has its own attempt,
    #: handle and outcome. Only for an executor that ``fuses``.
    chain: list[StageLaunch] = Field(default_factory=list)
    #: The pipeline's stages that read its outputs or wait for it: when all of them
    #: run after it in its execution, its finish readies nothing the engine starts.
    readers: list[str] = Field(default_factory=list)

    @property
    def members(self) -> list[StageLaunch]:
        """This launch and the ones fused after it."""
        return [self, *self.chain]


class Submission(BaseModel):
    """Where an attempt went: its handle, and the accelerator and place it got."""

    handle: str
    accelerator: Accelerator
    placement: str
    #: The batch it runs in, when the executor put it in another than the launch's
    #: (a warm process of the same stage): the engine records that one.
    batch: str | None = None


class Placement(BaseModel):
    """Where an attempt will go, chosen before anything is created there."""

    placement: str
    accelerator: Accelerator


class SubmitRefused(ExecutorError):
    """The executor refused this attempt for a reason of its own, not a passing fault.

    ``final``: retrying the same request cannot help (an invalid Job), so the attempt
    fails with this message; otherwise it is held and submitted again later (a quota
    that is full, permissions not granted yet)."""

    def __init__(self, message: str, final: bool) -> None:
        super().__init__(message)
        self.final = final


class ExecState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: The executor has no trace of it (a lost process, a deleted Job).
    LOST = "lost"
    #: A fused stage never started: an earlier stage of its execution failed first.
    SKIPPED = "skipped"


class ExecStatus(BaseModel):
    state: ExecState
    exit_code: int | None = None
    #: For failures: the stage's last stderr line, or what the executor saw.
    reason: str | None = None
    timed_out: bool = False
    #: The executor retried by itself and has used up the retries (a Job's backoffLimit).
    exhausted: bool = False
    #: How many times the executor ran it (pods of a Job); None: once.
    tries: int | None = None
    #: When the code itself began (a container started, not a pod queued for a node).
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: The manifest the stage wrote to S3, as it also handed it to the executor (the
    #: SDK does, locally): the engine then need not read it back. None: read it.
    manifest: dict[str, Any] | None = None
    #: The executor gave the attempt back, to be submitted again on this accelerator at
    #: the same place (a GPU Job no node could take within the stage's fallback wait;
    #: its Job is deleted first, so the two never run at once).
    requeue: Accelerator | None = None


class Capacity(BaseModel):
    """How many attempts the executor runs at once, in all and on GPUs."""

    slots: int = Field(ge=0)
    gpu_slots: int = Field(default=0, ge=0)


class Executor(Protocol):
    name: str

    #: The executor retries a failed attempt by itself (a Job's backoffLimit), so the
    #: engine must not retry on top of it.
    retries_itself: bool

    #: The executor runs a batch of launches in one process (see StageLaunch.batch);
    #: for one without it, the engine submits one launch at a time.
    batches: bool

    #: The attempt and its placement must be committed before submit: a create may
    #: take effect even when its answer is lost, and a retry must go to the same place.
    #: False where submitting the same attempt id again can only adopt it (one machine).
    durable_before_submit: bool

    #: The executor runs a launch's ``chain`` (fused stages) in the same execution and
    #: answers for each member's handle; for one without it, the engine never fuses.
    fuses: bool

    def capacity(self) -> Capacity: ...

    def place(self, launches: Sequence[StageLaunch]) -> dict[str, Placement]:
        """Where each launch would go now (pure choice, nothing created); launches
        missing from the answer have nowhere to go now."""
        ...

    def submit(self, launches: Sequence[StageLaunch]) -> dict[str, Submission]:
        """Starts the attempts where their ``placement`` says; returns attempt id ->
        handle. Submitting an attempt that was already submitted (a replay after a
        crash, a create whose answer was lost) must not start it twice. Raises
        ExecutorError when it cannot now (the attempt stays where it was placed), or
        SubmitRefused."""
        ...

    def poll(self, handles: Sequence[str]) -> dict[str, ExecStatus]: ...

    def cancel(self, handles: Sequence[str]) -> None: ...

    def log_uri(self, handle: str) -> str: ...

    def close(self) -> None: ...
