from orchestrator.store.models import (
    AlgorithmVersion,
    ApiKey,
    Checkpoint,
    Clip,
    Run,
    StageAttempt,
)
from orchestrator.store.repository import Store

__all__ = ["AlgorithmVersion", "ApiKey", "Checkpoint", "Clip", "Run", "StageAttempt", "Store"]
