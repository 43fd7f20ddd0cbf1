"""A delivery's body: ``{"type", "timestamp", "data"}`` as Standard Webhooks suggests,
rendered from the finished run and its clip. Those never change once the run has
ended, so every attempt and every replay of a delivery sends the same bytes."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.store.models import Clip, Run, iso


def run_data(run: Run, clip: Clip) -> dict[str, Any]:
    """What a receiver needs to act on a run's end without asking: which clip, how it
    ended, and where its result is (the whole result is fetched from the API, as it
    can be megabytes)."""
    summary = (run.result or {}).get("summary")
    return {
        "run_id": run.id,
        "clip_id": clip.id,
        "tenant": clip.tenant,
        "camera": clip.camera,
        "bucket": clip.bucket,
        "key": clip.key,
        "pipeline": run.pipeline,
        "status": str(run.status),
        "error": run.error,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "result_uri": run.result_uri,
        "summary": summary if isinstance(summary, dict) else None,
    }


def run_body(event_type: str, run: Run, clip: Clip) -> bytes:
    payload = {
        "type": event_type,
        "timestamp": iso(run.finished_at),
        "data": run_data(run, clip),
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
