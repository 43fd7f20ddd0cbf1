"""Which ready attempts run together, and how many executions start now. Pure.

A stage whose algorithm takes batches runs several clips in one process: interpreter,
imports and model are paid once per batch instead of once per clip. A batch takes one
of the executor's slots, like a lone attempt. Batches are spread over the free slots
(8 ready clips and 2 free slots make 2 batches of 4, not one of 8 and an idle core),
and are never larger than the stage's ``max_size``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace

from orchestrator.engine.decide import StartAttempt


@dataclass(frozen=True)
class Candidate:
    start: StartAttempt
    #: Attempts with equal keys may share a process (same algorithm version, params,
    #: accelerator, timeout); None: this one runs alone.
    key: Hashable | None
    max_size: int = 1
    #: How long it may wait for others to fill its batch, and how long it has waited.
    max_wait_seconds: float = 0.0
    waited_seconds: float = 0.0


def _chunks(members: list[Candidate], count: int, deal: bool) -> list[list[Candidate]]:
    """``members`` in ``count`` chunks of near-equal size, each in age order. ``deal``
    (all of them start now): dealt round-robin, so that side by side the oldest clips
    start first and a run of alike clips (a camera's backlog, bad files uploaded
    together) is shared out rather than one chunk's; otherwise contiguous, so that the
    chunks that start now hold the oldest clips."""
    if deal:
        return [chunk for chunk in (members[n::count] for n in range(count)) if chunk]
    size, extra = divmod(len(members), count)
    chunks, at = [], 0
    for n in range(count):
        step = size + (1 if n < extra else 0)
        chunks.append(members[at : at + step])
        at += step
    return [chunk for chunk in chunks if chunk]


def plan_executions(
    candidates: Sequence[Candidate], free_slots: int, free_gpu_slots: int
) -> list[list[StartAttempt]]:
    """The executions to start now, each a list of starts (one, or a batch), in the
    order of their oldest member. A GPU execution with a CPU fallback takes a CPU slot
    when no GPU slot is free, as ``admit`` does for lone attempts."""
    if free_slots <= 0:
        return []
    groups: dict[Hashable, list[Candidate]] = {}
    for n, candidate in enumerate(candidates):
        key = ("alone", n) if candidate.key is None else ("batch", candidate.key)
        groups.setdefault(key, []).append(candidate)
    # A batch that could still grow waits, for as long as its stage allows.
    ready = [
        members
        for members in groups.values()
        if len(members) >= members[0].max_size
        or max(m.waited_seconds for m in members) >= members[0].max_wait_seconds
    ]
    counts = [math.ceil(len(m) / max(1, m[0].max_size)) for m in ready]
    # Spread over the free slots: split the group with the most clips per execution.
    while sum(counts) < free_slots:
        splittable = [i for i, m in enumerate(ready) if counts[i] < len(m)]
        if not splittable:
            break
        widest = max(splittable, key=lambda i: len(ready[i]) / counts[i])
        counts[widest] += 1
    executions = [
        chunk
        for members, count in zip(ready, counts, strict=True)
        for chunk in _chunks(members, count, deal=sum(counts) <= free_slots)
    ]
    position = {id(c): n for n, c in enumerate(candidates)}
    executions.sort(key=lambda chunk: position[id(chunk[0])])
    admitted: list[list[StartAttempt]] = []
    for chunk in executions:
        if free_slots <= 0:
            break
        starts = [c.start for c in chunk]
        if starts[0].accelerator == "gpu":
            if free_gpu_slots > 0:
                free_gpu_slots -= 1
            elif starts[0].fallback:
                starts = [replace(s, accelerator=s.fallback, fallback=None) for s in starts]
            else:
                continue
        free_slots -= 1
        admitted.append(starts)
    return admitted
