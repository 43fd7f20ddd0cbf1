"""The operations page in a real headless browser (Debian's Chromium driven by
Playwright), against a live `camflow serve` that processed real clips: an admin sees
its charts as SVG drawn from that work, the failure with a link to its run, and the
page updating itself from the event stream when another clip finishes, with no
reload. Screenshots go to test-output/."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SampleClips
from tests.serving import camflow, free_port, upload, wait_until_up
from tests.test_dashboard import BROWSER_ARGS, CHROMIUM, OUTPUT

pytestmark = pytest.mark.slow


def _finished(base: str, key: str, count: int, timeout: float = 240) -> list[dict[str, Any]]:
    """Waits until ``count`` of the key's tenant's runs have finished; returns them all."""
    deadline = time.monotonic() + timeout
    while True:
        runs = httpx.get(f"{base}/v1/runs", headers={"Authorization": f"Bearer {key}"}).json()[
            "items"
        ]
        done = [r for r in runs if r["status"] in ("succeeded", "failed")]
        if len(done) >= count:
            return list(runs)
        assert time.monotonic() < deadline, runs
        time.sleep(0.5)


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed here (apt-get install chromium); CI installs it",
)
def test_an_admin_sees_the_operations_page_update_itself(
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
        CAMFLOW_API__EVENTS_POLL_SECONDS="0.5",
    )
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
        admin_key = camflow(env, "keys", "create", "--tenant", "ops", "--role", "admin")
        customer_key = camflow(env, "keys", "create", "--tenant", "shop", "--role", "customer")
        upload(base, camera_key, clips.face.read_bytes(), clips.face.name)
        upload(base, camera_key, clips.truncated.read_bytes(), clips.truncated.name)
        runs = _finished(base, customer_key, 2)
        [failed] = [r for r in runs if r["status"] == "failed"]
        assert [r["status"] for r in runs].count("succeeded") == 1, runs

        OUTPUT.mkdir(parents=True, exist_ok=True)
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})

            # A customer is turned away: the page shows every tenant's work.
            page.goto(f"{base}/dashboard/login")
            page.fill("input[name=key]", customer_key)
            page.click("button[type=submit]")
            page.wait_for_selector("#runs")
            assert page.locator("a[href='/dashboard/operations']").count() == 0
            answer = page.goto(f"{base}/dashboard/operations")
            assert answer is not None and answer.status == 403
            page.context.clear_cookies()

            page.goto(f"{base}/dashboard/login")
            page.fill("input[name=key]", admin_key)
            page.click("button[type=submit]")
            page.wait_for_selector("#runs")
            page.click("a[href='/dashboard/operations']")
            page.wait_for_selector("#throughput svg")
            assert page.locator("meta[http-equiv=refresh]").count() == 0

            # Every chart is an SVG image with a name and a description.
            for section in ("throughput", "stages", "load", "gpu", "watcher"):
                svg = page.locator(f"#{section} svg").first
                assert svg.get_attribute("role") == "img"
                assert page.locator(f"#{section} svg title").count() >= 1
                assert page.locator(f"#{section} svg desc").count() >= 1
            # ...drawn from the runs: one clip succeeded and one failed this minute.
            lines = page.locator("#throughput polyline.series")
            assert lines.count() == 2
            assert "1 succeeded · 1 failed" in page.locator("#throughput").inner_text()
            # The faces pipeline's stages, each with a p50 and a p95 bar above zero.
            bars = page.locator("#stages rect.bar")
            values = [
                float(bars.nth(i).get_attribute("data-value") or 0) for i in range(bars.count())
            ]
            stages = page.locator("#stages svg desc").text_content() or ""
            assert {"decode", "faces", "thumbnails", "publish"} <= {
                part.split(":")[0].strip() for part in stages.split(";")
            }
            assert len(values) >= 8 and all(v > 0 for v in values)
            # The failure, with its reason and a link to its run.
            failures = page.locator("#failures")
            assert "not a readable video" in failures.inner_text()
            link = failures.locator(f"a[href='/dashboard/runs/{failed['run_id']}']")
            assert link.count() == 1
            # The watcher recorded both clips, each within seconds of its upload.
            assert "2 clips" in page.locator("#watcher").inner_text()
            page.screenshot(path=str(OUTPUT / "operations.png"), full_page=True)

            # Another clip finishes: the page changes in place, from the stream.
            page.wait_for_function("document.documentElement.dataset.stream === 'open'")
            page.evaluate("window.__notReloaded = true")
            upload(base, camera_key, clips.no_face.read_bytes(), clips.no_face.name)
            page.wait_for_function(
                "document.querySelector('#throughput').innerText.includes('2 succeeded')",
                timeout=240_000,
            )
            assert page.evaluate("window.__notReloaded") is True
            assert page.locator("meta[http-equiv=refresh]").count() == 0
            page.screenshot(path=str(OUTPUT / "operations-updated.png"), full_page=True)

            # The link leads to the failed run.
            page.locator(f"#failures a[href='/dashboard/runs/{failed['run_id']}']").click()
            page.wait_for_selector("#timeline")
            assert "not a readable video" in page.locator("main").inner_text()
            browser.close()
        assert (OUTPUT / "operations.png").stat().st_size > 20_000
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
    assert serve.returncode == 0
