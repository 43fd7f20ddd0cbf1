"""``log_format: json``: one object per line, and the lines about a clip carry its clip,
run, stage and attempt as fields of their own."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.cli.main import _setup_logging
from orchestrator.domain.layout import upload_key
from orchestrator.errors import ConfigError
from orchestrator.logs import JsonFormatter, about
from orchestrator.service import drive, open_runtime
from orchestrator.settings import Settings, load_settings
from tests.api_world import T0
from tests.conftest import SampleClips


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """The commands under test replace the root handler: put back what pytest had."""
    root, camflow = logging.getLogger(), logging.getLogger("camflow")
    handlers, level, camflow_level = root.handlers[:], root.level, camflow.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    camflow.setLevel(camflow_level)


def _objects(text: str) -> list[dict[str, Any]]:
    """Every line as JSON: a line that is not fails the test."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_each_record_is_one_object_with_the_clip_fields_it_carries() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("camflow.test-json")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        log.warning(
            "clip %s run %s: stage %s attempt %d failed:\nline two",
            "c-1",
            "r-1",
            "decode",
            2,
            extra=about("c-1", "r-1", "decode", 2),
        )
        log.info("clip %s: run queued", "c-2", extra=about("c-2", "r-2"))
        log.info("nothing about a clip", extra={"stage": object()})  # any value: str()
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it broke", extra=about(run="r-3"))
    finally:
        log.removeHandler(handler)
    first, second, third, fourth = _objects(stream.getvalue())
    assert first == {
        "time": first["time"],
        "level": "WARNING",
        "logger": "camflow.test-json",
        "message": "clip c-1 run r-1: stage decode attempt 2 failed:\nline two",
        "clip": "c-1",
        "run": "r-1",
        "stage": "decode",
        "attempt": 2,
    }
    assert first["time"].endswith("Z") and first["time"][:2] == "20"
    assert second["clip"] == "c-2" and second["run"] == "r-2"
    assert "stage" not in second and "attempt" not in second  # only what is known
    assert third["stage"].startswith("<object object")
    assert fourth["run"] == "r-3" and "clip" not in fourth
    assert "ValueError: boom" in fourth["exception"]


def test_the_setting_takes_text_or_json_from_the_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings().log_format == "text"
    monkeypatch.setenv("CAMFLOW_LOG_FORMAT", "json")
    assert load_settings().log_format == "json"
    monkeypatch.delenv("CAMFLOW_LOG_FORMAT")
    config = tmp_path / "camflow.yaml"
    config.write_text("log_format: xml\n")
    with pytest.raises(ConfigError, match="log_format"):
        load_settings(config)


@pytest.mark.slow
def test_an_engine_run_logs_every_line_as_json_with_its_clip_run_stage_and_attempt(
    settings: Settings, clips: SampleClips, capsys: pytest.CaptureFixture[str]
) -> None:
    """The watcher finds a real clip and the engine runs the faces pipeline on it, with
    the logging `camflow serve` sets up for ``log_format: json``."""
    _setup_logging("INFO", log_format="json")
    with open_runtime(settings) as runtime:
        key = upload_key("acme", "door", T0)
        runtime.s3.upload_file(clips.face, settings.s3.ingest_bucket, key)
        runtime.watcher.tick()
        runtime.reconciler.plan_new_clips()
        [(run, clip)] = runtime.store.list_runs()
        drive(runtime, [run.id], timeout=300)
    lines = _objects(capsys.readouterr().err)
    about_clip = [line for line in lines if line.get("clip") == clip.id]
    messages = [line["message"] for line in about_clip]
    assert any("discovered by" in m for m in messages), messages
    assert all(line["logger"].startswith("camflow") for line in lines)
    stages = {line["stage"] for line in about_clip if "stage" in line}
    assert stages == {"decode", "faces", "thumbnails", "publish"}
    for line in about_clip:
        if "stage" in line:  # a stage's submission and outcome: which run and attempt
            assert line["run"] == run.id and line["attempt"] == 1, line
    assert any(f"succeeded, result at s3://{settings.s3.results_bucket}/" in m for m in messages)


def test_camflow_process_writes_its_warnings_as_json(
    tmp_path: Path, clips: SampleClips, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command reads log_format from its settings: a clip that fails says so in
    JSON lines (the progress bar is not a log line and stays as it is)."""
    monkeypatch.setenv("CAMFLOW_LOG_FORMAT", "json")
    monkeypatch.setenv("CAMFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CAMFLOW_S3__EMBEDDED", "true")  # its own S3, as a user's first run
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["process", "faces", str(clips.not_video), "--json"])
    assert done.exit_code == 3, done.output
    logged = _objects("\n".join(x for x in done.stderr.splitlines() if x.startswith("{")))
    failed = [line for line in logged if line["level"] == "WARNING"]
    assert failed, done.stderr
    assert {line["logger"] for line in failed} == {"camflow.engine"}
    stage_line = next(line for line in failed if "stage" in line)
    assert stage_line["stage"] == "decode" and stage_line["attempt"] == 1
    assert stage_line["clip"].startswith("c-") and stage_line["run"].startswith("r-")
    assert "not a readable video" in stage_line["message"]
