"""The stage contract: the only things a stage program and camflow agree on.

Stdlib only, so that both the orchestrator and slim algorithm images import it.
"""

from __future__ import annotations

ENV_INPUTS = "CAMFLOW_INPUTS"
ENV_OUTPUT = "CAMFLOW_OUTPUT"
ENV_PARAMS = "CAMFLOW_PARAMS"
ENV_RUN_ID = "CAMFLOW_RUN_ID"
ENV_STAGE = "CAMFLOW_STAGE"
ENV_ACCELERATOR = "CAMFLOW_ACCELERATOR"
#: JSON: the clip being processed (id, bucket, key, etag, size, tenant, camera). Reading
#: the clip must match its ETag: a newer upload under the same key is another clip.
ENV_CLIP = "CAMFLOW_CLIP"

#: The batch form: several clips for one process. A JSON list (inline, or in the file
#: CAMFLOW_BATCH_FILE names) of items ``{"env": {CAMFLOW_INPUTS: ..., ...}, "report":
#: PATH?}``: each item's ``env`` is the single-clip contract for that clip. A program
#: that takes batches (``batch: true`` in its manifest; the SDK's run_stage does)
#: processes every item, writes each one's manifest as usual, and, where an item names
#: a ``report`` file, writes ``{"exit_code", "reason", "started_at", "finished_at"}``
#: there when that clip is done. Exit 0 once every item is reported, whatever their
#: outcome: a bad clip fails alone.
ENV_BATCH = "CAMFLOW_BATCH"
ENV_BATCH_FILE = "CAMFLOW_BATCH_FILE"
#: Optional, set by a local executor that keeps batch processes warm: a folder where
#: further items of the same stage arrive as ``*.json`` files (a list each) after the
#: first ones; the program claims each file by renaming it to ``*.json.taken``, waits
#: up to CAMFLOW_BATCH_LINGER seconds after its last clip for more, then creates
#: ``closed`` there and takes what arrived meanwhile before it exits.
ENV_BATCH_MORE = "CAMFLOW_BATCH_MORE"
ENV_BATCH_LINGER = "CAMFLOW_BATCH_LINGER"
BATCH_TAKEN = ".taken"
BATCH_CLOSED = "closed"
#: Optional, set by a local executor for a program whose main(ctx) is thread-safe
#: (``thread_safe: true``): how many threads may run its clips side by side. Items
#: then carry a ``lane``, the batch each belongs to in camflow's count of busy slots;
#: at most as many clips run at once as lanes still have clips to finish, so that the
#: process never keeps more cores busy than the slots it was counted for.
ENV_BATCH_THREADS = "CAMFLOW_BATCH_THREADS"
LANE = "lane"
#: Set by a local executor on a process it starts before its batch exists (a spare,
#: ``python -m algorithms.spare``): the file where it then finds what to run, as
#: ``{"module": M, "cwd": DIR, "env": {...}}``, the environment added to its own.
ENV_SPARE = "CAMFLOW_SPARE"
#: The pid of the runner that supervises the spare: one whose parent is another (the
#: runner died, even before the spare began) ends rather than run a batch unsupervised.
ENV_SPARE_RUNNER = "CAMFLOW_SPARE_RUNNER"
#: Beside an item's report: written when the program starts that clip (its timeout
#: counts from then, not from the batch's start), and by the executor to cancel a clip
#: that has not started (the program then reports it cancelled and skips it).
BATCH_STARTED = "started.json"
BATCH_CANCELLED = "cancelled"
#: With a batch whose items name no ``report``, the item this process runs (an Indexed
#: Job's pod: the Job controller sets it to the pod's completion index). The program
#: runs only that item, under the single-clip contract: its exit code is that clip's
#: outcome (2 bad input, anything else but 0 transient), so the Job retries or fails
#: that index alone.
ENV_BATCH_INDEX = "JOB_COMPLETION_INDEX"

#: Optional, set by a local executor: a file where the program may also write its
#: manifest, once written to S3, so that camflow need not read it back (the SDK does).
ENV_MANIFEST_COPY = "CAMFLOW_MANIFEST_COPY"

#: Fused stages: several consecutive stages of one clip in one process (or one pod).
#: A stage given CAMFLOW_KEEP_LOCAL=1 hands its outputs, and its manifest, to the later
#: stages of its process instead of writing them to S3 (they are intermediates no one
#: else reads); the SDK does this for its stages. CAMFLOW_HANDOFF_DIR, where set, is a
#: folder the stages of one pod share for that (otherwise the hand-off is in memory).
ENV_KEEP_LOCAL = "CAMFLOW_KEEP_LOCAL"
ENV_HANDOFF_DIR = "CAMFLOW_HANDOFF_DIR"
#: In a batch of fused stages, each item is ``{"chain": [MEMBER, ...]}``: one clip's
#: stages in order, each MEMBER a batch item (``env``, ``report``, ``log``) plus the
#: ``module`` whose ``main(ctx)`` runs it. A member not run because an earlier one
#: failed is reported ``{"skipped": true, "reason": ...}``.
CHAIN = "chain"

#: Optional: how many CPUs the stage may keep busy (its share of the machine, or its
#: container's CPU request): compute libraries size their thread pools to it rather
#: than to every core, which stages running side by side would oversubscribe.
ENV_CPUS = "CAMFLOW_CPUS"

#: Optional, set by an executor that reads each container's termination message (a
#: fused stage on Kubernetes, whose manifest may go to no S3 when its outputs stay in
#: the pod): a file where the program also writes its manifest, as compact JSON, in
#: place (the SDK does). Single-clip contract only.
ENV_MANIFEST_MESSAGE = "CAMFLOW_MANIFEST_MESSAGE"

#: Written last under CAMFLOW_OUTPUT: its presence means the stage's outputs are complete.
MANIFEST_NAME = "_manifest.json"

EXIT_OK = 0
#: The input is bad: permanent, never retried. The reason is stderr's last line.
EXIT_BAD_INPUT = 2
#: What the local runner reports when it had to kill a stage at its timeout
#: (the same code GNU timeout uses).
EXIT_TIMED_OUT = 124

ACCELERATORS = ("cpu", "gpu")
