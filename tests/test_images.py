"""Algorithm images: multi-stage, pinned, non-root, and consistent with their manifests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from orchestrator.domain.catalog import load_algorithm
from orchestrator.settings import PROJECT_ROOT

ALGORITHMS = PROJECT_ROOT / "algorithms"
DOCKERFILES = sorted(ALGORITHMS.glob("*/Dockerfile*"))


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_every_built_in_algorithm_has_an_image() -> None:
    folders = {p.parent.name for p in ALGORITHMS.glob("*/algorithm.yaml")}
    assert folders == {p.parent.name for p in DOCKERFILES}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_images_are_multi_stage_pinned_and_non_root(path: Path) -> None:
    steps = _instructions(path)
    bases = [arg.split()[0] for op, arg in steps if op == "FROM"]
    assert len(bases) >= 2, "build in one stage, run in a slim one"
    for base in bases:
        if base in {arg.split()[-1] for op, arg in steps if op == "FROM" and " AS " in arg}:
            continue  # a reference to an earlier stage
        if "@sha256:" in base:
            continue  # pinned by digest: the best pin there is
        _name, _, tag = base.partition(":")
        assert tag and tag != "latest", f"unpinned base {base}"
        assert re.search(r"\d", tag), f"base {base} is not pinned to a version"
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    users = [arg for op, arg in final if op == "USER"]
    assert users, "the final stage must drop root"
    assert users[-1].split(":")[0] not in {"0", "root"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_images_install_only_pinned_packages_and_copy_what_exists(path: Path) -> None:
    for op, arg in _instructions(path):
        if op == "COPY" and not arg.startswith("--from"):
            *sources, _dest = arg.split()
            for source in sources:
                assert (PROJECT_ROOT / source).exists(), f"{source} is not in the repository"
                if source.endswith(".txt"):
                    for line in (PROJECT_ROOT / source).read_text().splitlines():
                        if line and not line.startswith("#"):
                            assert "==" in line, f"{source}: {line} is not pinned"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_image_command_is_the_manifest_command(path: Path) -> None:
    manifest = load_algorithm(path.parent / "algorithm.yaml")
    [cmd] = [arg for op, arg in _instructions(path) if op == "CMD"]
    assert json.loads(cmd) == manifest.command
