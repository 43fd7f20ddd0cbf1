"""The camflow command as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.conftest import SampleClips
from tests.serving import free_port, wait_until_up

COMMANDS = [
    "serve",
    "demo",
    "process",
    "runs",
    "results",
    "rejected",
    "pipelines",
    "clusters",
    "health",
    "algorithms",
    "algorithms register",
    "algorithms promote",
    "algorithms list",
    "algorithms show",
    "algorithms new",
    "algorithms try",
    "export",
    "status",
    "skipped",
    "webhooks",
]


def _every_command() -> list[list[str]]:
    """Every command and group the app has, found by walking it: one added later is
    covered without anyone remembering to list it."""
    import typer.main

    def walk(command: object, path: list[str]) -> list[list[str]]:
        found = [path]
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            found += walk(sub, [*path, name])
        return found

    return walk(typer.main.get_command(app), [])


def test_the_commands_users_know_are_all_there() -> None:
    assert {" ".join(c) for c in _every_command()} >= set(COMMANDS)


@pytest.mark.parametrize("command", _every_command(), ids=lambda c: " ".join(c) or "camflow")
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_pipelines_lists_what_is_loaded() -> None:
    result = CliRunner().invoke(app, ["pipelines", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    assert [s["name"] for s in listing["faces"]["stages"]] == [
        "decode",
        "faces",
        "thumbnails",
        "publish",
    ]


def test_a_misspelt_setting_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "camflow.yaml"
    config.write_text("local:\n  max_paralel: 4\n")
    result = CliRunner().invoke(app, ["--config", str(config), "pipelines"])
    assert result.exit_code == 1
    assert "local.max_paralel" in result.output and "not permitted" in result.output


def _camflow(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Runs the installed command with no S3 configured: the embedded default."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CAMFLOW_"))}
    env["CAMFLOW_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=home.parent,
    )


@pytest.mark.slow
def test_process_prints_one_json_result_per_file(tmp_path: Path, clips: SampleClips) -> None:
    home = tmp_path / "home"
    files = [clips.face, clips.no_face, clips.not_video]
    done = _camflow(home, "process", "faces", *map(str, files), "--json")
    assert done.returncode == 3, done.stderr  # 3: some clip failed
    results = json.loads(done.stdout)
    assert [r["clip"] for r in results] == ["face.mp4", "noface.mp4", "notes.mp4"]
    face, quiet, broken = results
    assert face["status"] == "succeeded" and face["error"] is None
    assert len(face["frames"]) == 15
    found = [d for f in face["frames"] for d in f["detections"]]
    assert len(found) >= 12
    assert all(d["label"] == "face" and 0 < d["score"] <= 1 and len(d["box"]) == 4 for d in found)
    assert all(isinstance(f["t"], float | int) for f in face["frames"])
    saved = Path(face["saved_to"])
    assert json.loads((saved / "result.json").read_text())["clip_id"] == face["clip_id"]
    thumbnails = sorted((saved / "thumbnails").glob("*.jpg"))
    assert len(thumbnails) == len(face["artifacts"]["thumbnails"]) == 6
    assert quiet["status"] == "succeeded" and all(not f["detections"] for f in quiet["frames"])
    assert broken["status"] == "failed" and "not a readable video" in broken["error"]
    assert "embedded S3" in done.stderr or "processing" in done.stderr

    # The same store answers `runs` and `results` afterwards.
    runs = json.loads(_camflow(home, "runs", "--json").stdout)
    assert sorted(r["status"] for r in runs) == ["failed", "succeeded", "succeeded"]
    shown = _camflow(home, "results", runs[0]["clip_id"], "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)[0]["clip_id"] == runs[0]["clip_id"]


@pytest.mark.slow
def test_demo_shows_real_detections(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = _camflow(tmp_path / "home", "demo", "--out", str(out), timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    rows = {line.split()[1]: line for line in lines if line.startswith("│")}
    for camera in ("lobby", "office"):  # the photographs with a face
        cells = [c.strip() for c in rows[camera].split("│")]
        assert cells[2] == "succeeded" and int(cells[4]) >= 15, rows[camera]
    for camera in ("kitchen", "garden"):
        cells = [c.strip() for c in rows[camera].split("│")]
        assert cells[2] == "succeeded" and int(cells[4]) == 0, rows[camera]
    assert "failed" in rows["entrance"]
    assert len(list((out / "results").rglob("result.json"))) == 5


def test_serve_listens_where_its_options_say(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CAMFLOW_"))}
    env.update(
        CAMFLOW_HOME=str(tmp_path / "home"),
        CAMFLOW_API__PORT="1",  # the option wins over the config
        CAMFLOW_S3__EMBEDDED_PORT=str(free_port()),
    )
    serve = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_up(serve, f"http://127.0.0.1:{port}")
    finally:
        serve.terminate()
        serve.wait(timeout=30)


def test_a_store_out_of_reach_is_one_line_saying_what_to_do(tmp_path: Path) -> None:
    """Whichever command meets it: no traceback, and the password not shown."""
    import subprocess
    import sys

    env = {
        **os.environ,
        "CAMFLOW_HOME": str(tmp_path),
        "CAMFLOW_STORE__URL": "postgresql+psycopg://camflow:s3cret@127.0.0.1:9/none",
    }
    for command in (["runs"], ["status"], ["skipped"]):
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", *command],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr and "s3cret" not in done.stderr
        assert "cannot reach the store at" in done.stderr
        assert "CAMFLOW_STORE__URL" in " ".join(done.stderr.split())


def test_tables_print_names_cameras_chose_as_text_not_markup() -> None:
    from datetime import UTC, datetime

    from rich.console import Console

    from orchestrator.cli.output import results_table, runs_table
    from orchestrator.store import Clip, Run

    key = "acme/door/2026/01/01/000000-[/][link=https://evil.example]x.mp4"
    clip = Clip(id="c-1", bucket="b", key=key, etag="e", tenant="acme", camera="door")
    run = Run(id="r-1", clip_id="c-1", pipeline="faces", created_at=datetime.now(UTC))
    console = Console(record=True, width=400)
    console.print(runs_table([(run, clip)]))
    console.print(results_table([(key, {"status": "[/]"})]))
    shown = console.export_text()
    assert shown.count(key) == 2  # whole, nothing eaten as markup
    assert "[/]" in shown.replace(key, "")  # the status, printed as it is
