"""The published results the engine checks as stages finish are kept for their runs'
result.json, so each is read from S3 once per run, not twice; without them (a restart,
a result too large to keep) the engine reads and checks them again."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from algorithms import contract
from algorithms.sdk import S3Uri
from orchestrator.engine.checked_results import CheckedResults
from orchestrator.executors.base import ExecStatus, StageLaunch, Submission
from orchestrator.service import Runtime, open_runtime
from orchestrator.settings import Settings
from orchestrator.store.models import RunStatus
from tests.test_engine_bulk import CpuOnlyInstant, _record, _result, _until_done


class Publishing(CpuOnlyInstant):
    """The publish stage writes a result of its clip's own, as the real one does."""

    def __init__(self, runtime_s3: Any) -> None:
        super().__init__()
        self.s3 = runtime_s3
        self.publishes: set[str] = set()

    def submit(self, launches: Sequence[StageLaunch]) -> dict[str, Submission]:
        for member in (m for launch in launches for m in launch.members):
            if member.stage == "publish":
                out = S3Uri.parse(member.env[contract.ENV_OUTPUT]).join("result.json")
                self.s3.put_json(out.bucket, out.key, {"of": member.clip_id})
                self.publishes.add(member.attempt_id)
        return super().submit(launches)

    def poll(self, handles: Sequence[str]) -> dict[str, ExecStatus]:
        polled = super().poll(handles)
        for handle in self.publishes & set(polled):
            outputs = {"result": "result.json"}
            polled[handle] = polled[handle].model_copy(
                update={"manifest": {"outputs": outputs, "metrics": {}}}
            )
        return polled


def _count_reads(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    reads: Counter[str] = Counter()
    read = runtime.s3.get_json_sized

    def counted(bucket: str, key: str, max_bytes: int | None = None) -> tuple[Any, int]:
        reads[key] += 1
        return read(bucket, key, max_bytes)

    monkeypatch.setattr(runtime.s3, "get_json_sized", counted)
    return reads


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "read-again"])
def test_each_published_result_is_read_once_per_run_and_lands_in_result_json(
    settings: Settings, store_url: str, monkeypatch: pytest.MonkeyPatch, kept: bool
) -> None:
    settings = settings.model_copy(
        update={"store": settings.store.model_copy(update={"url": store_url})}
    )
    with open_runtime(settings, executor=CpuOnlyInstant()) as runtime:
        runtime.executor = runtime.reconciler.executor = Publishing(runtime.s3)
        if not kept:  # as after a restart: nothing kept, so each is read again
            runtime.reconciler._checked_results = CheckedResults(budget_bytes=0)
        reads = _count_reads(runtime, monkeypatch)
        clip_ids = _record(runtime, 6)
        runs = _until_done(runtime, clip_ids)
        assert [r.status for r in runs] == [RunStatus.SUCCEEDED] * 6
        for run in runs:
            assert _result(runtime, run)["of"] == run.clip_id
        published = [key for key in reads if key.endswith("/publish/result.json")]
        assert len(published) == 6
        assert set(reads[key] for key in published) == {1 if kept else 2}
        assert len(runtime.reconciler._checked_results) == 0  # nothing left behind


def test_kept_results_stay_within_their_budget_oldest_first() -> None:
    kept = CheckedResults(budget_bytes=1600, largest_bytes=800)
    for n in range(5):
        kept.keep(f"a{n}", "result.json", {"n": n}, 400)
    assert len(kept) == 4  # a0 went first
    assert kept.take("a0", "result.json") is None
    assert kept.take("a4", "result.json") == {"n": 4}
    assert kept.take("a4", "result.json") is None  # taken once
    # Under another name it is not that result: read it again.
    assert kept.take("a3", "other.json") is None
    kept.keep("a1", "result.json", {"n": 1}, 50)  # kept again: replaces, not adds
    assert kept.take("a1", "result.json") == {"n": 1}
    # A giant is never kept, and crowds out nothing.
    kept.keep("huge", "result.json", {"big": True}, 801)
    assert kept.take("huge", "result.json") is None
    assert kept.take("a2", "result.json") == {"n": 2}
    kept.drop("missing")
