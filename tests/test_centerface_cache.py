"""The model is made dynamic once per model file, not at every stage start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from algorithms.faces import centerface
from algorithms.faces.centerface import CenterFace
from orchestrator.cli.samples import load_photo


@pytest.fixture
def rewrites(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Counts the onnx rewrites of the shipped model."""
    calls: list[object] = []
    original = centerface._dynamic_model_bytes

    def counted(*args: Any) -> bytes:
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(centerface, "_dynamic_model_bytes", counted)
    return calls


def _detections(detector: CenterFace) -> list[object]:
    return [detector.detect(load_photo(p)) for p in ("astronaut", "camera", "coffee")]


def test_the_second_load_reuses_the_rewritten_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rewrites: list[object]
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = CenterFace()
    assert len(rewrites) == 1
    folder = tmp_path / "cache" / "camflow" / "models"
    [cached] = folder.iterdir()  # the model alone: no temporary file left behind
    assert cached.suffix == ".onnx"
    second = CenterFace()
    assert len(rewrites) == 1, "the second load rewrote the model again"
    found = _detections(first)
    assert found[0] and _detections(second) == found


def test_a_cache_that_cannot_be_written_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rewrites: list[object]
) -> None:
    # A read-only container: the cache folder cannot be made (a file is in the way).
    (tmp_path / "ro").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "ro" / "cache"))
    detector = CenterFace()
    assert len(rewrites) == 1
    assert _detections(detector)[0]


def test_the_cache_is_keyed_by_the_model_bytes_not_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rewrites: list[object]
) -> None:
    import onnx

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    CenterFace()
    same = tmp_path / "same.onnx"
    same.write_bytes(centerface.default_model_path().read_bytes())
    CenterFace(same)
    assert len(rewrites) == 1
    changed = onnx.load(str(same))
    changed.doc_string = "retrained"
    onnx.save(changed, str(tmp_path / "changed.onnx"))
    CenterFace(tmp_path / "changed.onnx")
    assert len(rewrites) == 2
    assert len(list((tmp_path / "cache" / "camflow" / "models").iterdir())) == 2
