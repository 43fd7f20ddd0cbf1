from orchestrator.store.models import (
    AlgorithmVersion,
    ApiKey,
    Checkpoint,
    Clip,
    Run,
    StageAttempt,
)
from orchestrator.store.repository import Store
from orchestrator.store.sessions import DashboardSession
from orchestrator.store.tenancy import SkippedRun as SkippedRun
from orchestrator.store.webhooks import WebhookDelivery, WebhookEndpoint

__all__ = [
    "AlgorithmVersion",
    "ApiKey",
    "Checkpoint",
    "Clip",
    "DashboardSession",
    "Run",
    "StageAttempt",
    "Store",
    "WebhookDelivery",
    "WebhookEndpoint",
]
