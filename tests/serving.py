"""A camflow serve started as a user starts it, for tests that talk to it over HTTP."""

from __future__ import annotations

import socket
import subprocess
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
