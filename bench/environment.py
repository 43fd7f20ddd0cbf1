"""The settings, clips and S3 each scenario runs against: a throwaway home, the embedded
S3 (moto over HTTP, as `camflow demo` uses it), the shipped algorithms and the test
stages."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator.embedded_s3 import EmbeddedS3
from orchestrator.settings import PROJECT_ROOT, Settings, load_settings

BENCH = Path(__file__).resolve().parent
STAGES = PROJECT_ROOT / "tests" / "stages"


def bench_settings(home: Path, endpoint_url: str | None, **overrides: Any) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    s3: dict[str, Any] = {
        "embedded": False,
        "ingest_bucket": f"ingest-{suffix}",
        "results_bucket": f"results-{suffix}",
        "access_key_id": "bench",
        "secret_access_key": "bench",
    }
    if endpoint_url:
        s3["endpoint_url"] = endpoint_url
    return load_settings(
        home=home,
        s3=s3,
        algorithm_dirs=[PROJECT_ROOT / "algorithms", STAGES],
        pipeline_dirs=[PROJECT_ROOT / "pipelines", BENCH / "pipelines"],
        watcher={"wait_seconds": 0},
        **overrides,
    )


class CountingApp:
    """WSGI middleware that counts the requests the embedded S3 answers, by method."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        with self._lock:
            self.counts[environ.get("REQUEST_METHOD", "?")] += 1
        return self.app(environ, start_response)

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())


@contextmanager
def counted_s3() -> Iterator[tuple[EmbeddedS3, CountingApp]]:
    """The embedded S3 on a free port, with every request it answers counted."""
    server = EmbeddedS3(port=0).start()
    counter = CountingApp(server._server.app)
    server._server.app = counter
    try:
        yield server, counter
    finally:
        server.stop()
