"""``camflow algorithms try``: one algorithm on one clip, locally, with everything shown."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from algorithms.contract import MANIFEST_NAME
from orchestrator.cli.oneshot import one_shot_owner, run_files
from orchestrator.domain.algorithm import AlgorithmManifest
from orchestrator.domain.catalog import load_algorithm
from orchestrator.domain.layout import stage_prefix
from orchestrator.domain.pipeline import CLIP_INPUT, PipelineSpec, StageSpec
from orchestrator.errors import ConfigError
from orchestrator.executors.local_runner import STDERR
from orchestrator.service import Runtime, open_runtime
from orchestrator.settings import Settings
from orchestrator.storage import S3Gateway

#: Inputs ``try`` knows how to provide, and from what.
CLIP_INPUTS = {"video", "clip"}
FRAME_INPUTS = {"frames"}


def _algorithm(runtime: Runtime, ref: str) -> tuple[AlgorithmManifest, Path | None]:
    """A folder (not registered yet: the author's inner loop) or ``name[@version]``."""
    path = Path(ref)
    file = path / "algorithm.yaml" if path.is_dir() else path
    if file.name == "algorithm.yaml" and file.is_file():
        return load_algorithm(file), file.parent.resolve()
    name, _, version = ref.partition("@")
    try:
        manifest = runtime.catalog.algorithm(name, version or None)
    except KeyError as exc:
        raise ConfigError(ref, "", exc.args[0]) from None
    return manifest, runtime.catalog.sources.get(manifest.ref)


def trial_spec(manifest: AlgorithmManifest, params: dict[str, Any]) -> PipelineSpec:
    """decode first when the algorithm reads frames, then the algorithm itself."""
    inputs: dict[str, str] = {}
    stages = []
    for name in manifest.inputs:
        if name in CLIP_INPUTS:
            inputs[name] = CLIP_INPUT
        elif name in FRAME_INPUTS:
            inputs[name] = "decode"
        else:
            raise ConfigError(
                f"{manifest.ref}",
                "inputs",
                f"try can give an algorithm the clip ({sorted(CLIP_INPUTS)}) or its frames "
                f"({sorted(FRAME_INPUTS)}), not {name!r}: try it inside a pipeline with "
                "`camflow process`",
            )
    if "decode" in inputs.values():
        stages.append(StageSpec(name="decode", algorithm="decode", inputs={"video": CLIP_INPUT}))
    stages.append(StageSpec(name="trial", algorithm=manifest.ref, inputs=inputs, params=params))
    return PipelineSpec(name=f"try-{manifest.name}"[:40], stages=stages)


def try_algorithm(
    settings: Settings,
    ref: str,
    clip: Path,
    params: dict[str, Any],
    timeout: float,
    out_dir: Path,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    with open_runtime(settings) as runtime:
        manifest, source = _algorithm(runtime, ref)
        # A folder being tried may not be registered, or differ from what is: the trial
        # uses the folder as it is now, in a copy of the catalog.
        catalog = runtime.catalog.with_algorithm(manifest, source)
        pipeline = catalog.resolve(trial_spec(manifest, params), f"try {ref}")
        runtime.reconciler.extra_pipelines[pipeline.name] = pipeline
        runtime.reconciler.owner = one_shot_owner()
        [(_name, run)] = run_files(runtime, pipeline, [clip], "try", "local", timeout, on_progress)
        found = runtime.store.find_clip(run.clip_id)
        attempts = runtime.store.attempts_of_run(run.id)
        trial = [a for a in attempts if a.stage == "trial"]
        prefix = stage_prefix(found.tenant, found.camera, found.id, pipeline.name, "trial")
        bucket = settings.s3.results_bucket
        target = out_dir / manifest.name
        outputs, manifest_json = save_outputs(runtime.s3, bucket, prefix, target)
        log = stage_log(trial[-1].log_uri) if trial and trial[-1].log_uri else ""
        return {
            "algorithm": manifest.ref,
            "status": str(run.status),
            "error": run.error,
            "attempts": len(trial),
            "outputs": outputs,
            "metrics": (manifest_json or {}).get("metrics", {}),
            "log": log[-4000:],
            "saved_to": str(target),
        }


def save_outputs(
    s3: S3Gateway, bucket: str, prefix: str, target: Path
) -> tuple[list[dict[str, Any]], Any]:
    """Downloads what the stage wrote under ``prefix`` into ``target``: the outputs
    (path, bytes) and the stage's manifest, if it wrote one."""
    outputs, manifest_json = [], None
    # Every page of the listing: a stage may write more than the 1,000 keys of one.
    for item in s3.list_after(bucket, prefix, None):
        relative = item.key.removeprefix(prefix)
        outputs.append({"path": relative, "bytes": item.size})
        s3.download_file(bucket, item.key, target / relative)
        if relative == MANIFEST_NAME:
            manifest_json = s3.get_json(bucket, item.key)
    return outputs, manifest_json


def stage_log(log_uri: str) -> str:
    """The stderr a local attempt left in its folder (``log_uri`` is its file: URI,
    percent-encoded where the path has spaces and the like)."""
    stderr = Path(url2pathname(urlparse(log_uri).path)) / STDERR
    return stderr.read_text(errors="replace") if stderr.exists() else ""
