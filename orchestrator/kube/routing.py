"""Which cluster a stage attempt goes to. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from orchestrator.executors.base import StageLaunch
from orchestrator.settings import ClusterSettings

#: Algorithm channel -> the environment whose clusters run it.
ENVIRONMENT_OF_CHANNEL = {"dev": "dev", "stable": "prod"}


def choose_cluster(
    launch: StageLaunch,
    clusters: Sequence[ClusterSettings],
    reachable: Mapping[str, bool],
    active: Mapping[str, int],
    gpu_active: Mapping[str, int],
) -> tuple[ClusterSettings, str] | None:
    """The least loaded reachable cluster of the launch's environment with room, and the
    accelerator it gets there; None when none can take it now."""
    environment = ENVIRONMENT_OF_CHANNEL.get(launch.channel, "dev")
    room = [
        c
        for c in clusters
        if c.environment == environment
        and reachable.get(c.name, False)
        and active.get(c.name, 0) < c.budget
    ]

    def load(cluster: ClusterSettings) -> float:
        return active.get(cluster.name, 0) / cluster.budget

    if launch.accelerator == "gpu":
        gpus = [c for c in room if c.gpu and gpu_active.get(c.name, 0) < c.gpu.slots]
        if gpus:
            return min(gpus, key=load), "gpu"
        if launch.fallback and room:
            return min(room, key=load), launch.fallback
        return None
    return (min(room, key=load), launch.accelerator) if room else None
