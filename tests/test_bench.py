"""The benchmark harness in its quick mode, so that it cannot rot. It reports figures;
this checks that every scenario ran and said something sane, never how fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.settings import PROJECT_ROOT


@pytest.mark.slow
def test_the_quick_bench_measures_every_figure_and_saves_its_chart(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads((tmp_path / "bench.json").read_text())
    keys = {f["key"] for f in figures}
    assert keys == {"P2", "P3", "P4", "GPU"}
    names = " ".join(f["name"] for f in figures)
    for expected in (
        "overhead per stage",
        "bare loop",
        "engine ceiling",
        "Kubernetes API",
        "faces model on",
    ):
        assert expected in names
    for figure in figures:
        assert figure["ours"] > 0 or "overhead" in figure["name"], figure
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")
    assert "camflow bench" in done.stdout
