"""The dashboard in a real headless browser (Debian's Chromium driven by Playwright),
against a live `camflow serve`: a camera uploads through its presigned URL with plain
HTTP, the run finishes, a customer signs in and sees it, with its timeline and
thumbnails, and fetches the result with the customer key."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from orchestrator.settings import PROJECT_ROOT
from tests.conftest import SampleClips
from tests.serving import camflow, free_port, wait_until_up

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OUTPUT = Path(os.environ.get("CAMFLOW_TEST_OUTPUT", PROJECT_ROOT / "test-output"))
# Chromium's own network chatter is refused here; keep it from trying.
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed here (apt-get install chromium); CI installs it",
)
def test_a_customer_sees_a_finished_run_with_its_thumbnails(
    tmp_path: Path, clips: SampleClips
) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CAMFLOW_"))}
    env.update(
        CAMFLOW_HOME=str(tmp_path / "home"),
        CAMFLOW_API__PORT=str(port),
        CAMFLOW_S3__EMBEDDED_PORT=str(free_port()),
        CAMFLOW_WATCHER__WAIT_SECONDS="1",
        CAMFLOW_ENGINE__INTERVAL_SECONDS="0.3",
    )
    # A live camflow, as a user starts it: embedded S3, SQLite, local stages.
    serve = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(serve, base)
        camera_key = camflow(
            env, "keys", "create", "--tenant", "shop", "--role", "camera", "--camera", "door"
        )
        customer_key = camflow(env, "keys", "create", "--tenant", "shop", "--role", "customer")
        other_key = camflow(env, "keys", "create", "--tenant", "elsewhere", "--role", "customer")
        camera = {"Authorization": f"Bearer {camera_key}"}
        customer = {"Authorization": f"Bearer {customer_key}"}

        grant = httpx.post(f"{base}/v1/cameras/door/uploads", headers=camera).json()
        # A camera's upload, as a browser form would send it: the grant's fields, the file.
        sent = httpx.post(
            grant["url"], data=grant["fields"], files={"file": clips.face.read_bytes()}
        )
        assert sent.status_code == 204, sent.text
        deadline = time.monotonic() + 180
        while True:
            runs = httpx.get(f"{base}/v1/runs", headers=customer).json()["items"]
            if runs and runs[0]["status"] in ("succeeded", "failed"):
                break
            assert time.monotonic() < deadline, runs
            time.sleep(0.5)
        [run] = runs
        assert run["status"] == "succeeded", run["error"]

        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{base}/dashboard")
            assert page.url.endswith("/dashboard/login")
            page.fill("input[name=key]", customer_key)
            page.click("button[type=submit]")
            page.wait_for_selector("#runs")
            session = {c["name"]: c for c in page.context.cookies()}["camflow_session"]
            assert session["httpOnly"] and session["sameSite"] == "Lax"
            assert customer_key not in session["value"]  # an id, never the key
            row = page.locator("#runs tr", has_text=grant["key"])
            assert "succeeded" in row.inner_text()
            assert "door" in page.locator("#cameras").inner_text()
            row.locator("a").click()
            page.wait_for_selector("#timeline")
            lanes = page.locator("#timeline .lane")
            assert lanes.count() == 4
            assert "decode" in lanes.first.inner_text()
            images = page.locator("#thumbnails img")
            assert images.count() == 6
            page.wait_for_function(
                "() => [...document.querySelectorAll('#thumbnails img')]"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            OUTPUT.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(OUTPUT / "dashboard-run.png"), full_page=True)
            # Signing out: the header's link, then the form that carries the CSRF token.
            page.click("header >> text=sign out")
            page.click("form.logout button[type=submit]")
            page.wait_for_selector("input[name=key]")
            cookies = {c["name"]: c for c in page.context.cookies()}
            assert "camflow_session" not in cookies
            assert cookies["camflow_csrf"]["httpOnly"]
            # Another tenant's customer sees none of it.
            page.fill("input[name=key]", other_key)
            page.click("button[type=submit]")
            page.wait_for_selector("#runs")
            assert grant["key"] not in page.content()
            browser.close()
        assert (OUTPUT / "dashboard-run.png").stat().st_size > 10_000

        results = httpx.get(f"{base}/v1/clips/{run['clip_id']}/results", headers=customer).json()
        assert results[0]["summary"]["labels"]["face"] >= 12
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
    assert serve.returncode == 0  # Ctrl-C stops it cleanly
