from orchestrator.store.models import (
    AlgorithmVersion,
    ApiKey,
    Checkpoint,
    Clip,
    Run,
    StageAttempt,
)
from orchestrator.store.repository import Store
from orchestrator.store.tenancy import SkippedRun as SkippedRun

__all__ = ["AlgorithmVersion", "ApiKey", "Checkpoint", "Clip", "Run", "StageAttempt", "Store"]
