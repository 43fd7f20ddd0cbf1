"""``camflow algorithms new``: a working algorithm to start from."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from orchestrator.errors import CamflowError
from orchestrator.settings import PROJECT_ROOT

NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
SDK_FILES = ("__init__.py", "contract.py", "sdk.py")

MAIN = '''"""{name}: mean brightness of every sampled frame; dark frames are reported.

Inputs:  ``frames`` — a decode stage's output (index.json + JPEG frames).
Outputs: ``result.json`` with ``frames`` (``t``, ``brightness``, ``detections``).
"""

from __future__ import annotations

import cv2
import numpy as np

from algorithms.sdk import BadInput, StageContext, StageReport, run_stage


def analyse(image: np.ndarray, dark_below: float) -> dict:
    """The algorithm itself: pure, so its test needs no S3 and no camflow."""
    brightness = float(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).mean())
    height, width = image.shape[:2]
    detections = []
    if brightness < dark_below:
        detections.append({{"label": "dark", "score": round(1 - brightness / 255, 3),
                           "box": [0, 0, width, height]}})
    return {{"brightness": round(brightness, 2), "detections": detections}}


def main(ctx: StageContext) -> StageReport:
    frames = ctx.input("frames")
    index = ctx.get_json(frames.join("index.json"))
    dark_below = float(ctx.params["dark_below"])
    results = []
    for entry, blob in zip(index["frames"],
                           ctx.get_many(frames.join(e["file"]) for e in index["frames"]),
                           strict=True):
        image = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            # Exit 2: bad input, never retried; this sentence is what the user sees.
            raise BadInput(f"frame {{entry['file']}} is not a readable JPEG")
        results.append({{"t": entry["t"], **analyse(image, dark_below)}})
    ctx.put_json("result.json", {{"frames": results}})
    mean = sum(r["brightness"] for r in results) / max(1, len(results))
    return StageReport(
        outputs={{"result": "result.json"}},
        metrics={{"frames": len(results), "mean_brightness": round(mean, 2),
                  "dark_frames": sum(1 for r in results if r["detections"])}},
    )


if __name__ == "__main__":
    run_stage(main)
'''

MANIFEST = """name: {name}
version: 0.1.0
description: Mean brightness of sampled frames; reports dark ones.
image: registry.example.com/{name}:0.1.0
command: [python, -m, {module}]
accelerators:
  cpu: {{cpu: 250m, memory: 256Mi}}
inputs: [frames]
params_schema:
  type: object
  additionalProperties: false
  properties:
    dark_below:
      type: number
      minimum: 0
      maximum: 255
      default: 40
      description: Frames darker than this mean brightness are reported.
timeout_seconds: 300
retries: 2
"""

DOCKERFILE = """# syntax=docker/dockerfile:1
# Build from the folder that holds {module}/ and algorithms/ (the camflow SDK):
#   docker build -f {module}/Dockerfile -t registry.example.com/{name}:0.1.0 .
FROM python:3.11.10-slim-bookworm AS build
RUN python -m venv /opt/venv
COPY {module}/requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt

FROM python:3.11.10-slim-bookworm
RUN groupadd --gid 10001 camflow && useradd --uid 10001 --gid 10001 --no-create-home \\
    --shell /usr/sbin/nologin camflow
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY algorithms/__init__.py algorithms/contract.py algorithms/sdk.py algorithms/
COPY {module}/ {module}/
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TMPDIR=/tmp
USER 10001:10001
CMD ["python", "-m", "{module}"]
"""

REQUIREMENTS = """# Pinned: what the stage imports, and nothing else.
boto3==1.44.5
numpy==2.4.6
opencv-python-headless==4.14.0.94
"""

TEST = """import numpy as np

from {module}.__main__ import analyse


def test_a_black_frame_is_dark_and_a_white_one_is_not() -> None:
    black = np.zeros((48, 64, 3), np.uint8)
    white = np.full((48, 64, 3), 255, np.uint8)
    dark = analyse(black, dark_below=40)
    assert dark["brightness"] == 0 and dark["detections"][0]["box"] == [0, 0, 64, 48]
    assert analyse(white, dark_below=40) == {{"brightness": 255.0, "detections": []}}
"""


def scaffold(name: str, workspace: Path) -> Path:
    """Creates ``workspace/<module>/`` (module: the name with ``_`` for ``-``) and, if
    the workspace has none, a copy of the camflow SDK in ``workspace/algorithms/``."""
    if not NAME.fullmatch(name):
        raise CamflowError(
            f"{name!r} is not a valid algorithm name: lower-case letters, digits and '-', "
            "starting with a letter, at most 40 characters"
        )
    module = name.replace("-", "_")
    folder = workspace / module
    if folder.exists():
        raise CamflowError(f"{folder} already exists: choose another name or --dir")
    folder.mkdir(parents=True)
    values = {"name": name, "module": module}
    (folder / "__init__.py").write_text("")
    (folder / "__main__.py").write_text(MAIN.format(**values))
    (folder / "algorithm.yaml").write_text(MANIFEST.format(**values))
    (folder / "Dockerfile").write_text(DOCKERFILE.format(**values))
    (folder / "requirements.txt").write_text(REQUIREMENTS)
    (folder / f"test_{module}.py").write_text(TEST.format(**values))
    sdk = workspace / "algorithms"
    if not (sdk / "sdk.py").exists():
        sdk.mkdir(exist_ok=True)
        for file in SDK_FILES:
            shutil.copyfile(PROJECT_ROOT / "algorithms" / file, sdk / file)
    return folder
