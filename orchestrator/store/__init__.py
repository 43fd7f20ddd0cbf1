from orchestrator.store.models import Checkpoint, Clip, Run, StageAttempt
from orchestrator.store.repository import Store

__all__ = ["Checkpoint", "Clip", "Run", "StageAttempt", "Store"]
