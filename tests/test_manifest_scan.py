"""A third-party scanner, checkov, on what camflow deploys and creates: both overlays
as rendered, and every Job the shipped pipelines can produce (lone and batch, on each
cluster and accelerator, with and without registered image digests). No check fails;
each finding that stays is skipped on the object itself, with its reason.

checkov pins boto3 far below camflow's, so it lives in a virtual environment of its
own (`.venv-scan`, from constraints-scan.txt; the suite makes it once)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.domain.catalog import Catalog, load_catalog
from orchestrator.kube.jobs import build_batch_job, build_job, with_own_credentials
from orchestrator.settings import PROJECT_ROOT, ClusterSettings, KubernetesSettings
from tests.kube_fixtures import launch_for

OVERLAYS = ("dev", "prod")
DIGEST = "sha256:" + "5" * 64
#: The findings that may stay, by kind, each skipped in place with its reason: the
#: orchestrator's service-account token (it calls the API server) and its image's
#: digest (known only once the release builds it); a stage image without a registered
#: digest, a pinned one pulled IfNotPresent, and S3 credentials as Secret references.
MAY_STAY = {
    "Deployment": {"CKV_K8S_38", "CKV_K8S_43"},
    "Job": {"CKV_K8S_15", "CKV_K8S_35", "CKV_K8S_43"},
}
CONTROL = "cf-control-unskipped"
#: The checks shipped in the package, not the platform's (no network), as JSON.
OFFLINE_JSON = ("--skip-download", "--output", "json")


def _checkov() -> str:
    for candidate in (
        os.environ.get("CAMFLOW_CHECKOV"),
        str(SCAN_VENV / "bin" / "checkov"),
        shutil.which("checkov"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return _install_checkov()


#: checkov's own virtual environment: it pins boto3 far below camflow's.
SCAN_VENV = PROJECT_ROOT / ".venv-scan"


def _install_checkov() -> str:
    """Makes ``.venv-scan`` from the project's own pins (constraints-scan.txt), once: the
    suite's one command installs everything it runs. Skips, saying why, where no package
    index answers (outside CI)."""
    steps = [
        [sys.executable, "-m", "venv", str(SCAN_VENV)],
        [
            str(SCAN_VENV / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "-c",
            str(PROJECT_ROOT / "constraints-scan.txt"),
            "checkov",
        ],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            why = f"could not install checkov into {SCAN_VENV}: {done.stderr.strip()[-500:]}"
            if os.environ.get("CI"):
                pytest.fail(why)
            pytest.skip(why)
    return str(SCAN_VENV / "bin" / "checkov")


def _with_digests(catalog: Catalog) -> Catalog:
    """The same pipelines as if every image, each accelerator's own too, had its digest
    registered."""
    for name, versions in catalog.algorithms.items():
        for version, manifest in versions.items():
            ref = f"{name}@{version}"
            catalog.image_digests[ref] = DIGEST
            catalog.accelerator_digests[ref] = {
                acc: DIGEST for acc, res in manifest.accelerators.items() if res.image
            }
    for spec, source in catalog.specs.values():
        catalog.pipelines[spec.name] = catalog.resolve(spec, source)
    return catalog


def shipped_clusters() -> list[ClusterSettings]:
    """The clusters the overlays configure (their ConfigMaps' camflow.yaml)."""
    clusters = []
    for overlay in OVERLAYS:
        config = PROJECT_ROOT / "manifests" / "overlays" / overlay / "config.yaml"
        text = yaml.safe_load(config.read_text())["data"]["camflow.yaml"]
        clusters += KubernetesSettings.model_validate(yaml.safe_load(text)["kubernetes"]).clusters
    return clusters


def every_job() -> list[dict[str, Any]]:
    """Each Job the shipped pipelines can make on the shipped clusters: every stage on
    each accelerator it supports and each cluster that has it, alone and (for
    algorithms that take batches) as a batch, with images by tag and by digest, and
    with credentials of its own. A stage that two pipelines share makes the same Job
    but for its labels: once."""
    jobs: dict[tuple[str, ...], dict[str, Any]] = {}
    clusters = shipped_clusters()
    shipped = ([PROJECT_ROOT / "algorithms"], [PROJECT_ROOT / "pipelines"])
    catalogs = [load_catalog(*shipped), _with_digests(load_catalog(*shipped))]
    for pinned, catalog in enumerate(catalogs):
        for pipeline in catalog.pipelines.values():
            for stage, resolved in pipeline.stages.items():
                for accelerator in resolved.algorithm.accelerators:
                    for cluster in clusters:
                        if accelerator == "gpu" and cluster.gpu is None:
                            continue
                        ref = resolved.algorithm.ref
                        key = (ref, stage, accelerator, cluster.name, str(pinned))
                        if key in jobs:
                            continue
                        launch = launch_for(pipeline, stage, accelerator)
                        jobs[key] = build_job(launch, cluster)
                        if not pinned:  # as made where a broker mints its credentials
                            own = with_own_credentials(jobs[key], session_token=True)
                            jobs[(*key, "own-credentials")] = own
                        if resolved.algorithm.batch:
                            launches = [launch_for(pipeline, stage, accelerator, n) for n in (1, 2)]
                            batch = build_batch_job(f"b-{stage}", launches, cluster)
                            jobs[(*key, "batch")] = batch
    return list(jobs.values())


def _rendered(overlay: str) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with kustomize) is not installed here: cannot render overlays")
    done = subprocess.run(
        ["kubectl", "kustomize", str(PROJECT_ROOT / "manifests" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _control(job: dict[str, Any]) -> dict[str, Any]:
    """A Job with its skip annotations taken off: the scan must fail it, or it is not
    really looking."""
    job = json.loads(json.dumps(job))
    job["metadata"]["name"] = CONTROL
    job["metadata"]["annotations"] = {
        k: v for k, v in job["metadata"]["annotations"].items() if "checkov.io/skip" not in k
    }
    return job


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    checkov = _checkov()
    folder = tmp_path_factory.mktemp("scan")
    documents: dict[str, list[dict[str, Any]]] = {o: _rendered(o) for o in OVERLAYS}
    for golden in sorted((PROJECT_ROOT / "tests" / "golden").glob("*.yaml")):
        documents[f"golden-{golden.stem}"] = [yaml.safe_load(golden.read_text())]
    for n, job in enumerate(every_job()):
        documents[f"job-{n:03d}"] = [job]
    documents["control"] = [_control(documents["golden-job-decode-cpu-dev"][0])]
    for name, docs in documents.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    done = subprocess.run(
        [checkov, "--directory", str(folder), "--framework", "kubernetes", *OFFLINE_JSON],
        capture_output=True,
        text=True,
        timeout=240,
    )
    # checkov exits 1 when a check fails (the control Job's do); anything else is trouble.
    assert done.returncode in (0, 1), done.stderr[-3000:]
    report = json.loads(done.stdout)
    [report] = report if isinstance(report, list) else [report]
    return {"report": report, "documents": documents}


def _kind(resource: str) -> str:
    return resource.split(".", 1)[0]


@pytest.mark.slow  # checkov over some 80 objects: 10-20 s on 2 cores
def test_nothing_fails_but_the_control(scan: dict[str, Any]) -> None:
    report = scan["report"]
    summary, results = report["summary"], report["results"]
    assert summary["parsing_errors"] == 0
    # Every object, and the pod inside each Deployment and Job, was looked at.
    objects = [d for docs in scan["documents"].values() for d in docs]
    pods = [d for d in objects if d["kind"] in ("Deployment", "Job")]
    assert summary["resource_count"] == len(objects) + len(pods)
    failed = {(c["check_id"], c["resource"]) for c in results["failed_checks"]}
    outside = sorted(f"{check} {resource}" for check, resource in failed if CONTROL not in resource)
    assert outside == [], "findings the manifests or Jobs do not answer:\n" + "\n".join(outside)
    # The control is the decode Job with its skips taken off: it fails exactly those.
    control = {check for check, _ in failed}
    golden = scan["documents"]["golden-job-decode-cpu-dev"][0]["metadata"]["annotations"]
    skipped = {v.split("=", 1)[0] for k, v in golden.items() if "checkov.io/skip" in k}
    assert control == skipped == {"CKV_K8S_35", "CKV_K8S_43"}
    assert summary["passed"] > 400  # everything else it checks, on every object


@pytest.mark.slow  # checkov over some 80 objects: 10-20 s on 2 cores
def test_each_finding_that_stays_is_skipped_in_place_with_its_reason(
    scan: dict[str, Any],
) -> None:
    skipped = scan["report"]["results"]["skipped_checks"]
    assert skipped
    for check in skipped:
        kind, reason = _kind(check["resource"]), check["check_result"]["suppress_comment"]
        assert check["check_id"] in MAY_STAY[kind], (check["check_id"], check["resource"])
        assert reason != "No comment provided" and len(reason) > 40, check["resource"]


def test_images_are_pinned_when_a_digest_is_known_and_pulled_to_match() -> None:
    jobs = every_job()
    for job in jobs:
        [container] = job["spec"]["template"]["spec"]["containers"]
        annotations = " ".join(job["metadata"]["annotations"].values())
        if "@sha256:" in container["image"]:
            assert container["imagePullPolicy"] == "IfNotPresent"
            assert "CKV_K8S_43" not in annotations and "CKV_K8S_15=" in annotations
        else:
            assert container["imagePullPolicy"] == "Always"
            assert "CKV_K8S_15" not in annotations and "CKV_K8S_43=" in annotations
    # The GPU image of faces (an image of its own) is pinned by its own digest.
    gpu = [
        c["image"]
        for j in jobs
        for c in j["spec"]["template"]["spec"]["containers"]
        if c["image"].startswith("ghcr.io/camflow/faces:1.2.0-gpu@")
    ]
    assert gpu and all(image.endswith(DIGEST) for image in gpu)
