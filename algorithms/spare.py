"""``python -m algorithms.spare``: a stage process started before its batch exists.

A local executor starts one ahead, so that the interpreter and the imports every SDK
stage pays (numpy, OpenCV, onnxruntime, boto3 and its S3 model: about 0.4 s of CPU)
are done when a batch comes. It waits for the file CAMFLOW_SPARE names, which the
executor writes only once the batch is this process's, then becomes that batch's
``python -m MODULE`` in the folder and with the environment the file gives.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import runpy
import sys
import time
from collections.abc import Callable
from pathlib import Path

from algorithms import contract

#: What most stages import, in the order a batch needs them (its first clip's S3 client
#: and decoding first, a model later): done while no batch waits for them. A module not
#: installed here is left to the stage, which says so if it needs it.
PRELOAD = ("numpy", "cv2", "boto3", "algorithms.sdk", "onnxruntime")
POLL_SECONDS = 0.01
#: Left beside the order file once it no longer imports ahead (all done, or an order
#: came), and once the order is read.
READY = "ready"
TAKEN = "taken"


def _prewarm_s3() -> None:
    from algorithms.sdk import prewarm_s3

    prewarm_s3()


def _forget(name: str) -> None:
    """A module whose import failed, as if never tried: the stage that needs it then
    fails with the import's own error (OpenCV's loader, half done, would otherwise say
    "recursion is detected" instead)."""
    for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[loaded]
    with contextlib.suppress(AttributeError):
        delattr(sys, "OpenCV_LOADER")


def _preload(order: Path) -> None:
    """The imports, one after another, until a batch's order comes: the batch then
    starts at once and its stages import the rest as they reach them."""
    steps: list[tuple[str, Callable[[], object]]] = [
        (name, functools.partial(importlib.import_module, name)) for name in PRELOAD
    ]
    steps.insert(PRELOAD.index("algorithms.sdk") + 1, ("S3 model", _prewarm_s3))
    for name, step in steps:
        if order.exists():
            return
        try:
            step()
        except Exception:
            _forget(name)  # a name no module has (the S3 model) forgets nothing


def _wait_for(order: Path, parent: int) -> dict | None:
    """The batch's order, or None once ``parent`` (its runner) is gone: no batch then
    runs here unsupervised."""
    while not order.exists():
        if os.getppid() != parent:
            return None
        time.sleep(POLL_SECONDS)
    payload = json.loads(order.read_text())
    order.unlink()  # it carries the batch's credentials
    if os.getppid() != parent:
        return None
    (order.parent / TAKEN).touch()  # its runner now supervises it
    return payload


def _become(order: dict) -> None:
    env = {str(k): str(v) for k, v in order.get("env", {}).items()}
    os.environ.update(env)
    # As `python -m` would have set them up had it started here, with this path.
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if order.get("cwd"):
        os.chdir(order["cwd"])
        paths.insert(0, order["cwd"])
    sys.path[0:0] = [p for p in paths if p not in sys.path]
    runpy.run_module(order["module"], run_name="__main__", alter_sys=True)


def main() -> None:
    order_file = Path(os.environ.pop(contract.ENV_SPARE))
    # Its runner, as it said: it may have died even before this process began.
    parent = int(os.environ.pop(contract.ENV_SPARE_RUNNER, "0")) or os.getppid()
    _preload(order_file)
    # For whoever waits to measure a warm start (the bench); nothing depends on it.
    (order_file.parent / READY).touch()
    order = _wait_for(order_file, parent)
    if order is None:
        sys.exit(0)
    _become(order)


if __name__ == "__main__":
    main()
