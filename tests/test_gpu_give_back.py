"""A GPU execution the executor gives back for CPU (no node could take it) when CPU
stages had joined it (placement.join_gpu): its first stage runs again alone on CPU,
writing what it was to hand over to S3, and the joined stages after it run on CPU
from there; the first stage never runs twice."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from bench.engine_ceiling import InstantExecutor
from orchestrator.executors.base import Capacity, ExecState, ExecStatus, StageLaunch, Submission
from orchestrator.service import open_runtime
from orchestrator.settings import Settings
from orchestrator.store.models import AttemptState, RunStatus
from tests.test_engine_bulk import _record, _until_done


class NoGpuNodeTakesIt(InstantExecutor):
    """Has a GPU slot, but gives every GPU execution back for CPU, as the Kubernetes
    executor does for a GPU pod no node could take: its first stage requeued, the
    stages fused after it skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.launches: dict[str, StageLaunch] = {}
        self.given_back: dict[str, ExecStatus] = {}
        self.ran: list[tuple[str, str, str]] = []

    def capacity(self) -> Capacity:
        return Capacity(slots=8, gpu_slots=1)

    def submit(self, launches: Sequence[StageLaunch]) -> dict[str, Submission]:
        for launch in launches:
            if launch.accelerator == "gpu":
                reason = "no node could take it on GPU for 60 s: moved to CPU"
                self.given_back[launch.attempt_id] = ExecStatus(
                    state=ExecState.QUEUED, requeue="cpu", reason=reason
                )
                for member in launch.chain:
                    self.given_back[member.attempt_id] = ExecStatus(
                        state=ExecState.SKIPPED, reason="not run: given back before it"
                    )
            else:
                self.ran += [(m.stage, m.attempt_id, m.accelerator) for m in launch.members]
        return super().submit(launches)

    def poll(self, handles: Sequence[str]) -> dict[str, ExecStatus]:
        polled = super().poll(handles)
        now = datetime.now(UTC)
        for handle in handles:
            given = self.given_back.pop(handle, None)
            if given is not None:
                polled[handle] = given.model_copy(update={"finished_at": now})
        return polled


def test_a_gpu_chain_given_back_for_cpu_runs_its_model_once_and_the_joined_stages_after(
    settings: Settings, store_url: str
) -> None:
    executor = NoGpuNodeTakesIt()
    settings = settings.model_copy(
        update={"store": settings.store.model_copy(update={"url": store_url})}
    )
    with open_runtime(settings, executor=executor) as runtime:
        [clip] = _record(runtime, 1)
        [run] = _until_done(runtime, [clip])
        assert run.status == RunStatus.SUCCEEDED, run.error
        attempts = runtime.store.attempts_of_run(run.id)
        faces = [a for a in attempts if a.stage == "faces"]
        # Given back once, run once on CPU: the model never runs a second time.
        assert [(a.attempt, a.state, a.accelerator, a.keep_local) for a in faces] == [
            (1, AttemptState.SUCCEEDED, "cpu", False)
        ]
        assert [stage for stage, _, _ in executor.ran].count("faces") == 1
        # The joined stages, skipped with it, ran after it on CPU, together.
        later = [a for a in attempts if a.stage in ("thumbnails", "publish")]
        assert sorted((a.stage, a.attempt, a.state) for a in later) == [
            ("publish", 1, AttemptState.SKIPPED),
            ("publish", 2, AttemptState.SUCCEEDED),
            ("thumbnails", 1, AttemptState.SKIPPED),
            ("thumbnails", 2, AttemptState.SUCCEEDED),
        ]
        second = [a for a in later if a.attempt == 2]
        assert {a.accelerator for a in second} == {"cpu"}
        assert len({a.batch or a.id for a in second}) == 1
