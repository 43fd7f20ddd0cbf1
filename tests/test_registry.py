"""The algorithm registry: immutable versions, channels, pinned runs, and the author's
loop through the CLI (scaffold, try, register, use, promote)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.domain.catalog import load_pipeline_specs
from orchestrator.errors import ConfigError, NotFound
from orchestrator.registry import Registry, RegistryError
from orchestrator.settings import PROJECT_ROOT
from orchestrator.store import Store
from orchestrator.store.models import Channel
from tests.conftest import SampleClips

BUILT_IN = PROJECT_ROOT / "algorithms"


def _copy_algorithm(tmp_path: Path, name: str, version: str, **changes: str) -> Path:
    folder = tmp_path / f"{name}-{version}" / name
    shutil.copytree(BUILT_IN / name, folder)
    manifest = folder / "algorithm.yaml"
    text = manifest.read_text().replace("version: 1.2.0", f"version: {version}")
    for old, new in changes.items():
        text = text.replace(old, new)
    manifest.write_text(text)
    return folder


@pytest.fixture
def registry(store_url: str) -> Registry:
    return Registry(Store(store_url))


def test_a_new_version_lands_on_dev_and_registering_it_again_changes_nothing(
    registry: Registry,
) -> None:
    row, created = registry.register(BUILT_IN / "faces")
    assert created and row.id == "faces@1.2.0" and row.channel == Channel.DEV
    again, created = registry.register(BUILT_IN / "faces" / "algorithm.yaml")
    assert not created and again.content_digest == row.content_digest


def test_the_same_version_with_other_content_is_refused(registry: Registry, tmp_path: Path) -> None:
    registry.register(BUILT_IN / "faces")
    changed = _copy_algorithm(tmp_path, "faces", "1.2.0", **{"default: 0.5": "default: 0.6"})
    with pytest.raises(RegistryError, match=r"versions are immutable; give .* a new version"):
        registry.register(changed)
    # A different image digest is different content too.
    with pytest.raises(RegistryError, match="already registered with different content"):
        registry.register(BUILT_IN / "faces", image_digest="sha256:" + "a" * 64)


def test_a_malformed_image_digest_is_refused(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="sha256:<64 hex digits>"):
        registry.register(BUILT_IN / "faces", image_digest="latest")


def test_channels_resolve_and_runs_keep_the_versions_they_started_with(
    registry: Registry, tmp_path: Path
) -> None:
    for name in ("decode", "thumbnails", "publish"):
        registry.register(BUILT_IN / name)
    registry.register(BUILT_IN / "faces")
    registry.register(
        _copy_algorithm(tmp_path, "faces", "1.3.0"), image_digest="sha256:" + "b" * 64
    )
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "faces.yaml").write_text(
        (PROJECT_ROOT / "pipelines" / "faces.yaml")
        .read_text()
        .replace("faces@1.2.0", "faces@stable")
    )
    specs = load_pipeline_specs([pipelines])
    with pytest.raises(ConfigError, match="no version of 'faces' is on the stable channel"):
        registry.catalog(specs)

    registry.promote("faces", "1.2.0")
    catalog = registry.catalog(specs)
    assert catalog.pipeline("faces").pins["faces"] == "faces@1.2.0"
    assert catalog.algorithm("faces", "dev").version == "1.3.0"
    assert catalog.algorithm("faces").version == "1.2.0"  # bare name: stable first
    old_pins = catalog.pipeline("faces").pins

    registry.promote("faces", "1.3.0")
    newer = registry.catalog(specs)
    assert newer.pipeline("faces").pins["faces"] == "faces@1.3.0"
    assert newer.pipeline("faces").stages["faces"].image_digest == "sha256:" + "b" * 64
    # A run created before the promotion still runs what it started with.
    pinned = newer.pipeline_for_run("faces", old_pins)
    assert pinned is not None and pinned.stages["faces"].algorithm.version == "1.2.0"
    assert pinned.stages["faces"].image_digest is None


def test_promoting_an_unknown_version_says_what_exists(registry: Registry) -> None:
    registry.register(BUILT_IN / "faces")
    with pytest.raises(NotFound, match=r"faces@9.9.9 is not registered; faces has \['1.2.0'\]"):
        registry.promote("faces", "9.9.9")


def test_launches_use_the_registered_digest() -> None:
    from orchestrator.domain.catalog import ResolvedStage, load_algorithm
    from orchestrator.domain.pipeline import StageSpec
    from orchestrator.engine.launches import code_root, image_reference

    manifest = load_algorithm(BUILT_IN / "faces" / "algorithm.yaml")
    stage = ResolvedStage(
        StageSpec(name="faces", algorithm="faces", inputs={"frames": "x"}),
        manifest,
        {},
        "sha256:" + "c" * 64,
        BUILT_IN / "faces",
    )
    cpu, gpu = manifest.accelerators["cpu"], manifest.accelerators["gpu"]
    assert image_reference(stage, cpu) == f"ghcr.io/camflow/faces:1.2.0@sha256:{'c' * 64}"
    assert image_reference(stage, gpu) == "ghcr.io/camflow/faces:1.2.0-gpu"
    assert code_root(BUILT_IN / "faces", manifest.command) == str(PROJECT_ROOT)
    assert code_root(Path("/w/bright"), ["python", "-m", "bright"]) == "/w"
    assert code_root(Path("/w/bright"), ["./run.sh"]) == "/w/bright"


def _camflow(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CAMFLOW_"))}
    env["CAMFLOW_HOME"] = str(cwd / ".camflow")
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_an_author_scaffolds_tries_registers_uses_and_promotes(
    tmp_path: Path, clips: SampleClips
) -> None:
    made = _camflow(tmp_path, "algorithms", "new", "brightness")
    assert made.returncode == 0, made.stderr
    scaffold_test = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "brightness"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert scaffold_test.returncode == 0, scaffold_test.stdout

    tried = _camflow(
        tmp_path,
        "algorithms",
        "try",
        "./brightness",
        str(clips.no_face),
        "--param",
        "dark_below=250",
        "--json",
    )
    assert tried.returncode == 0, tried.stderr
    report = json.loads(tried.stdout)
    assert report["status"] == "succeeded"
    assert {o["path"] for o in report["outputs"]} == {"result.json", "_manifest.json"}
    assert report["metrics"]["frames"] == 15 and report["metrics"]["dark_frames"] == 15
    assert (Path(report["saved_to"]) / "result.json").exists()

    bad = _camflow(
        tmp_path,
        "algorithms",
        "try",
        "./brightness",
        str(clips.no_face),
        "--param",
        "dark_below=999",
    )
    assert bad.returncode == 1 and "params/dark_below" in bad.stderr.replace(".", "/")

    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "bright.yaml").write_text(
        "name: bright\ntrigger: {prefix: bright/}\nstages:\n"
        "  - {name: decode, algorithm: decode@1.2.0, inputs: {video: clip}}\n"
        "  - {name: brightness, algorithm: brightness@stable, inputs: {frames: decode}}\n"
    )
    (tmp_path / "camflow.yaml").write_text(
        f"pipeline_dirs: [{PROJECT_ROOT / 'pipelines'}, ./pipelines]\n"
    )
    registered = _camflow(tmp_path, "algorithms", "register", "./brightness", "--json")
    assert registered.returncode == 0, registered.stderr
    assert json.loads(registered.stdout)["channel"] == "dev"
    refused = _camflow(tmp_path, "process", "bright", str(clips.no_face))
    assert refused.returncode == 1 and "on the stable channel" in refused.stderr
    assert _camflow(tmp_path, "algorithms", "promote", "brightness", "0.1.0").returncode == 0
    done = _camflow(tmp_path, "process", "bright", str(clips.no_face), "--json")
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)
    assert [s["algorithm"] for s in result["stages"]] == ["decode@1.2.0", "brightness@0.1.0"]
    shown = json.loads(_camflow(tmp_path, "algorithms", "show", "brightness", "--json").stdout)
    assert shown[0]["channel"] == "stable"
    assert shown[0]["params_schema"]["properties"]["dark_below"]["default"] == 40


def test_registering_a_bad_resource_quantity_is_refused_naming_the_field(
    tmp_path: Path,
) -> None:
    folder = _copy_algorithm(tmp_path, "faces", "1.3.0", **{'cpu: "2"': "cpu: lots"})
    refused = _camflow(tmp_path, "algorithms", "register", str(folder))
    assert refused.returncode == 1, refused.stdout
    message = " ".join(refused.stderr.split())
    assert "accelerators.cpu.cpu" in message and "'lots' is not a Kubernetes quantity" in message
    listed = _camflow(tmp_path, "algorithms", "list", "--json")
    assert "1.3.0" not in {row["version"] for row in json.loads(listed.stdout)}


def test_an_image_digest_with_a_trailing_newline_is_refused(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="sha256:<64 hex digits>"):
        registry.register(BUILT_IN / "faces", image_digest="sha256:" + "a" * 64 + "\n")
