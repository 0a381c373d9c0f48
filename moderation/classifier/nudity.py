"""The nudity detector of images, for the `sexual` category (docs/nudity-detector.md).

NudeNet 3.4.2's detector: a YOLOv8n (`320n.onnx`, 320 x 320 input, 18 body-part classes) that
ships inside the pinned `nudenet` wheel, so nothing is downloaded. It runs on onnxruntime's CPU
provider. The package's own `NudeDetector` is not used: it needs OpenCV for three steps that
Pillow and numpy do as well (pad, resize, NMS), and it feeds the model BGR where the model was
trained on RGB (its `cvtColor(RGBA2BGR)` then `swapRB` swap twice on an image `cv2.imread` already
read as BGR; notAI-tech/NudeNet#203; the in-browser demo, which reads RGBA, is right). Here the
model gets what YOLOv8 was trained on: RGB scaled to [0, 1], letterboxed into the top-left
corner of a black square as NudeNet pads, one score per class, and per-class NMS (Ultralytics'
default; NudeNet's `cv2.dnn.NMSBoxes` is class-agnostic and would let a covered-part box hide an
exposed-part box on the same region).

The score of an image is the highest score among the exposed classes that make it `sexual`
(`SEXUAL_LABELS`); faces, feet, armpits, bellies, male chests and every covered class never
count. The detector cannot tell a minor from an adult, nor art or medicine from pornography:
a hit alone removes a post only at a very high score (`NuditySettings.remove_score`); the rest
goes to the agent or to review.
"""

from __future__ import annotations

import ast
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from moderation.classifier.pinned_files import checked_digest, package_dir
from moderation.settings import NuditySettings
from moderation.taxonomy import Decision

NUDENET_PACKAGE = "nudenet==3.4.2"
MODEL_FILE = "320n.onnx"
_DIGESTS = {MODEL_FILE: "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f"}
INPUT_SIZE = 320
# NudeNet's post-processing: NMS keeps boxes scoring at least 0.25 (its `NMSBoxes` threshold;
# rows under it never become detections) and merges boxes overlapping at IoU > 0.45.
MIN_SCORE = 0.25
NMS_IOU = 0.45
# Images per model call in `detect_batch`.
BATCH = 4


class NudeNetLabel(StrEnum):
    """The model's classes, in its output order (the ONNX file's `names` metadata)."""

    FEMALE_GENITALIA_COVERED = "FEMALE_GENITALIA_COVERED"
    FACE_FEMALE = "FACE_FEMALE"
    BUTTOCKS_EXPOSED = "BUTTOCKS_EXPOSED"
    FEMALE_BREAST_EXPOSED = "FEMALE_BREAST_EXPOSED"
    FEMALE_GENITALIA_EXPOSED = "FEMALE_GENITALIA_EXPOSED"
    MALE_BREAST_EXPOSED = "MALE_BREAST_EXPOSED"
    ANUS_EXPOSED = "ANUS_EXPOSED"
    FEET_EXPOSED = "FEET_EXPOSED"
    BELLY_COVERED = "BELLY_COVERED"
    FEET_COVERED = "FEET_COVERED"
    ARMPITS_COVERED = "ARMPITS_COVERED"
    ARMPITS_EXPOSED = "ARMPITS_EXPOSED"
    FACE_MALE = "FACE_MALE"
    BELLY_EXPOSED = "BELLY_EXPOSED"
    MALE_GENITALIA_EXPOSED = "MALE_GENITALIA_EXPOSED"
    ANUS_COVERED = "ANUS_COVERED"
    FEMALE_BREAST_COVERED = "FEMALE_BREAST_COVERED"
    BUTTOCKS_COVERED = "BUTTOCKS_COVERED"


LABELS: tuple[NudeNetLabel, ...] = tuple(NudeNetLabel)

# What makes an image `sexual` (policy v1: sexually explicit content): exposed genitalia, anus,
# female breasts and buttocks, the parts NudeNet's author counted as "nude" when he evaluated
# his detector. A bare male chest, belly, armpit or foot is everyday (beach, sport, medicine);
# covered parts and faces say nothing about nudity.
SEXUAL_LABELS: frozenset[NudeNetLabel] = frozenset(
    {
        NudeNetLabel.FEMALE_GENITALIA_EXPOSED,
        NudeNetLabel.MALE_GENITALIA_EXPOSED,
        NudeNetLabel.ANUS_EXPOSED,
        NudeNetLabel.FEMALE_BREAST_EXPOSED,
        NudeNetLabel.BUTTOCKS_EXPOSED,
    }
)

ImageInput = Image.Image | npt.NDArray[np.uint8]


class NudityModelUnavailable(RuntimeError):
    """The model file is missing, unreadable, not the pinned one, or not NudeNet's detector."""


@dataclass(frozen=True)
class Detection:
    """One body part found: its class, score and box (x, y, width, height in image pixels)."""

    label: NudeNetLabel
    score: float
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class NudityResult:
    """An image's `sexual` score (0 when no sexual part was found) and every detection."""

    score: float
    detections: list[Detection] = field(default_factory=list)

    @property
    def label(self) -> NudeNetLabel | None:
        """The sexual class that gave the score, if any."""
        sexual = [d for d in self.detections if d.label in SEXUAL_LABELS]
        return max(sexual, key=lambda d: d.score).label if sexual else None


def default_model_path() -> Path:
    """`320n.onnx` inside the installed `nudenet` package (found without importing it: its
    import loads OpenCV)."""
    return package_dir("nudenet", NUDENET_PACKAGE, NudityModelUnavailable) / MODEL_FILE


@dataclass(frozen=True)
class _Letterbox:
    """Where an image went in the model's square input: its scale and original size."""

    scale: float
    width: int
    height: int


def _rgb(image: ImageInput) -> Image.Image:
    """The image as 8-bit RGB; alpha is dropped, as NudeNet does (what lies under a transparent
    pixel is still looked at)."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"an image array must be uint8, not {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return Image.fromarray(array, mode="L").convert("RGB")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(array[:, :, :3]), mode="RGB")
    raise ValueError(f"an image array must be HxW, HxWx3 or HxWx4, not {array.shape}")


def preprocess(image: ImageInput) -> tuple[npt.NDArray[np.float32], _Letterbox]:
    """The model's input (1 x 3 x 320 x 320, RGB in [0, 1]) and how to map boxes back.

    The longer side is scaled to 320 and the image placed in the top-left corner of a black
    square (NudeNet's padding); resizing before padding costs less than after and gives the
    same picture.
    """
    rgb = _rgb(image)
    width, height = rgb.size
    if width < 1 or height < 1:
        raise ValueError(f"an image needs at least one pixel, not {width}x{height}")
    scale = INPUT_SIZE / max(width, height)
    size = (
        max(1, min(INPUT_SIZE, round(width * scale))),
        max(1, min(INPUT_SIZE, round(height * scale))),
    )
    # reducing_gap: a fast integer reduction first for large downscales, then bilinear.
    resized = (
        rgb if size == rgb.size else rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    )
    square = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), dtype=np.float32)
    square[: size[1], : size[0]] = np.asarray(resized, dtype=np.float32) * (1.0 / 255.0)
    blob = np.ascontiguousarray(square.transpose(2, 0, 1)[np.newaxis])
    return blob, _Letterbox(scale=scale, width=width, height=height)


def _iou(box: npt.NDArray[np.float32], others: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """IoU of one (x1, y1, x2, y2) box with each of `others`."""
    left = np.maximum(box[0], others[:, 0])
    top = np.maximum(box[1], others[:, 1])
    right = np.minimum(box[2], others[:, 2])
    bottom = np.minimum(box[3], others[:, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0).astype(np.float32)


def _nms(corners: npt.NDArray[np.float32], scores: npt.NDArray[np.float32]) -> list[int]:
    """Greedy NMS: indices kept, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[_iou(corners[best], corners[rest]) <= NMS_IOU]
    return keep


def decode(
    output: npt.NDArray[np.float32], box: _Letterbox, *, min_score: float = MIN_SCORE
) -> list[Detection]:
    """Detections from one image's raw output (22 x N: cx, cy, w, h, then 18 class scores).

    Each candidate takes its best class (as NudeNet); NMS runs per class; boxes are mapped back
    to the original image and clipped to it. Sorted by score, highest first.
    """
    rows = output.T  # N x 22
    class_scores = rows[:, 4:]
    class_ids = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(len(rows)), class_ids]
    chosen = scores >= min_score
    if not chosen.any():
        return []
    rows, class_ids, scores = rows[chosen], class_ids[chosen], scores[chosen]
    centre_x, centre_y, box_w, box_h = (rows[:, i] for i in range(4))
    corners = np.stack(
        [centre_x - box_w / 2, centre_y - box_h / 2, centre_x + box_w / 2, centre_y + box_h / 2],
        axis=1,
    ).astype(np.float32)
    detections: list[Detection] = []
    for class_id in np.unique(class_ids):
        members = np.flatnonzero(class_ids == class_id)
        for kept in _nms(corners[members], scores[members]):
            index = int(members[kept])
            x1, y1, x2, y2 = (float(v) / box.scale for v in corners[index])
            x1, x2 = min(max(x1, 0.0), box.width), min(max(x2, 0.0), box.width)
            y1, y2 = min(max(y1, 0.0), box.height), min(max(y2, 0.0), box.height)
            detections.append(
                Detection(
                    label=LABELS[int(class_id)],
                    score=round(float(scores[index]), 6),
                    box=(int(x1), int(y1), int(round(x2 - x1)), int(round(y2 - y1))),
                )
            )
    detections.sort(key=lambda d: d.score, reverse=True)
    return detections


def result_of(detections: list[Detection]) -> NudityResult:
    """The image's score: its best sexual detection's (0.0 without one)."""
    sexual = [d.score for d in detections if d.label in SEXUAL_LABELS]
    return NudityResult(score=max(sexual, default=0.0), detections=detections)


def _model_labels(session: Any) -> list[str] | None:
    """The class names the ONNX file records (Ultralytics writes them as a dict literal)."""
    names = session.get_modelmeta().custom_metadata_map.get("names")
    if names is None:
        return None
    try:
        parsed = ast.literal_eval(names)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(parsed, dict):
        return None
    return [str(parsed[key]) for key in sorted(parsed)]


class NudityDetector:
    """NudeNet's detector on onnxruntime's CPU provider; the session is built on first use.

    `threads` is onnxruntime's intra-op thread count (one image's convolutions split across
    that many cores). Thread-safe: onnxruntime sessions may be run from several threads.
    """

    def __init__(
        self, model_path: Path | None = None, *, threads: int = 2, min_score: float = MIN_SCORE
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        self.pinned = model_path is None
        self.model_path = default_model_path() if model_path is None else Path(model_path)
        if not self.model_path.is_file():
            where = "the nudenet package" if self.pinned else "the configured model_path"
            raise NudityModelUnavailable(
                f"the nudity model {self.model_path} does not exist ({where}; the default is "
                f"{MODEL_FILE} inside {NUDENET_PACKAGE}, nothing is downloaded)"
            )
        self.threads = threads
        self.min_score = min_score
        self._session: Any = None
        self._input_name = ""
        self._loading = threading.Lock()
        self.model_sha256 = ""

    @property
    def model_version(self) -> str:
        """What produced a score, for the verdict's signals: file name and digest."""
        self._ensure()
        return f"nudenet-{self.model_path.stem}:{self.model_sha256[:12]}"

    @property
    def session(self) -> Any:
        """The onnxruntime session (built on first use)."""
        self._ensure()
        return self._session

    def _ensure(self) -> None:
        if self._session is not None:
            return
        with self._loading:  # two first callers at once build one session
            if self._session is None:
                self._load()

    def _load(self) -> None:
        import onnxruntime as ort  # type: ignore[import-untyped]  # ~0.2 s: only when used

        if self.pinned:
            digest = checked_digest(
                self.model_path, _DIGESTS, NUDENET_PACKAGE, NudityModelUnavailable
            )
        else:
            try:
                digest = hashlib.sha256(self.model_path.read_bytes()).hexdigest()
            except OSError as problem:
                raise NudityModelUnavailable(f"cannot read {self.model_path}: {problem}") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads sleep instead of spinning: the worker shares its cores with stage 1
        # and the event loop, and with a core taken by another process a spinning 2-thread pool
        # ran at half the speed of one thread (docs/nudity-detector.md, "Speed").
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(
                str(self.model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as problem:  # onnxruntime raises its own, untyped, errors
            raise NudityModelUnavailable(
                f"{self.model_path} is not a loadable ONNX model: {problem}"
            ) from None
        outputs = session.get_outputs()
        labels = _model_labels(session)
        if (labels is not None and labels != [str(label) for label in LABELS]) or (
            len(outputs) != 1 or outputs[0].shape[1] != 4 + len(LABELS)
        ):
            raise NudityModelUnavailable(
                f"{self.model_path} is not a NudeNet detector with the 18 classes expected"
            )
        self._input_name = session.get_inputs()[0].name
        self.model_sha256 = digest
        self._session = session

    def detect(self, image: ImageInput) -> NudityResult:
        """The image's sexual score and detections.

        Raises:
            ValueError: not an image this detector can read (array shape or type).
            NudityModelUnavailable: the model cannot be loaded.
        """
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[ImageInput]) -> list[NudityResult]:
        """Several images, results in order; up to `BATCH` per model call (1.2 MiB of input
        each), which gains ~7 % over one at a time."""
        results: list[NudityResult] = []
        for start in range(0, len(images), BATCH):
            prepared = [preprocess(image) for image in images[start : start + BATCH]]
            self._ensure()
            blob = np.concatenate([input_ for input_, _ in prepared], axis=0)
            (output,) = self._session.run(None, {self._input_name: blob})
            results.extend(
                result_of(decode(output[i], box, min_score=self.min_score))
                for i, (_, box) in enumerate(prepared)
            )
        return results


def nudity_decision(result: NudityResult, settings: NuditySettings) -> Decision | None:
    """What the detector alone says about the post: `remove` at or above `remove_score`,
    `review` (the agent, else a human) at or above `review_score`, else None (no objection;
    it never allows: the text and the hash lists still decide)."""
    if result.score >= settings.remove_score:
        return Decision.REMOVE
    if result.score >= settings.review_score:
        return Decision.REVIEW
    return None


@cache
def _cached_detector(model_path: Path | None, threads: int) -> NudityDetector:
    return NudityDetector(model_path, threads=threads)


def load_nudity_detector(settings: NuditySettings) -> NudityDetector:
    """The process's detector for these settings (one per model path and thread count).

    Raises:
        NudityModelUnavailable: the model file is missing.
    """
    return _cached_detector(settings.model_path, settings.threads)
