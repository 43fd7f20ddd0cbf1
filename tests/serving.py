"""A camflow serve started as a user starts it, for tests that talk to it over HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(serve: subprocess.Popen[str], base: str, timeout: float = 60) -> None:
    """Returns once ``base``/healthz answers; fails with serve's stderr if it died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert serve.poll() is None, serve.stderr.read() if serve.stderr else ""
        assert time.monotonic() < deadline, "camflow serve did not come up"
        time.sleep(0.2)


def camflow(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """Runs a ``camflow`` command as a user would, in ``env``; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return done.stdout.strip()


def upload(base: str, camera_key: str, body: bytes, name: str = "clip.mp4") -> str:
    """Uploads ``body`` as a camera does: a grant from the API, then its presigned POST
    (the grant's fields, the file last). The key it went to."""
    grant = httpx.post(
        f"{base}/v1/cameras/door/uploads", headers={"Authorization": f"Bearer {camera_key}"}
    ).json()
    sent = httpx.post(grant["url"], data=grant["fields"], files={"file": (name, body, "video/mp4")})
    assert sent.status_code == 204, sent.text
    return str(grant["key"])
