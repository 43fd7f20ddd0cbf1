"""The dashboard in a real headless browser (Debian's Chromium driven by Playwright),
against a live camflow: a camera uploads through its presigned URL with plain HTTP,
the run finishes, a customer signs in and sees it, with its timeline and thumbnails."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest

from orchestrator.api.keys import create_key
from orchestrator.service import Service, open_runtime
from orchestrator.settings import PROJECT_ROOT, Settings
from orchestrator.store.models import Role
from tests.conftest import SampleClips

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed here (apt-get install chromium); CI installs it",
)
def test_a_customer_sees_a_finished_run_with_its_thumbnails(
    settings: Settings, clips: SampleClips
) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    from orchestrator.cli import start_api

    port = _free_port()
    settings = settings.model_copy(
        update={
            "watcher": settings.watcher.model_copy(update={"interval_seconds": 0.5}),
            "engine": settings.engine.model_copy(update={"interval_seconds": 0.3}),
            "api": settings.api.model_copy(update={"port": port}),
        }
    )
    with open_runtime(settings) as runtime:
        service = Service(runtime)
        service.start()
        server = start_api(runtime)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                if server.started:
                    break
                time.sleep(0.05)
            _, camera_key = create_key(runtime.store, "shop", Role.CAMERA, "door")
            _, customer_key = create_key(runtime.store, "shop", Role.CUSTOMER)
            camera = {"Authorization": f"Bearer {camera_key}"}
            customer = {"Authorization": f"Bearer {customer_key}"}

            grant = httpx.post(f"{base}/v1/cameras/door/uploads", headers=camera).json()
            put = httpx.put(grant["url"], content=clips.face.read_bytes(), headers=grant["headers"])
            assert put.status_code == 200, put.text
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
                # Another tenant's customer sees none of it.
                _, other = create_key(runtime.store, "elsewhere", Role.CUSTOMER)
                page.goto(f"{base}/dashboard/logout")
                page.fill("input[name=key]", other)
                page.click("button[type=submit]")
                page.wait_for_selector("#runs")
                assert grant["key"] not in page.content()
                browser.close()
            assert (OUTPUT / "dashboard-run.png").stat().st_size > 10_000

            results = httpx.get(
                f"{base}/v1/clips/{run['clip_id']}/results", headers=customer
            ).json()
            assert results[0]["summary"]["labels"]["face"] >= 12
        finally:
            server.should_exit = True
            service.stop()
