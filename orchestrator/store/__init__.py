from orchestrator.store.models import AlgorithmVersion, Checkpoint, Clip, Run, StageAttempt
from orchestrator.store.repository import Store

__all__ = ["AlgorithmVersion", "Checkpoint", "Clip", "Run", "StageAttempt", "Store"]
