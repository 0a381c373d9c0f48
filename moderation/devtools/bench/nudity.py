"""`moderation bench --nudity`: the nudity detector's false positives on safe images that ship
inside installed packages, and its speed on ~1-megapixel images (docs/nudity-detector.md).

Only files inside the installed wheels are read, straight from their paths with Pillow (never
through a package's fetcher, so nothing can download): scikit-image's bundled `skimage/data`
(not the images its `pooch` registry would fetch), its LFW subset (100 faces and 100 non-faces,
25 x 25), matplotlib's `mpl-data/sample_data`, scikit-learn's two sample photographs and
SciPy's `ndimage` test image. imageio and Pillow ship no images (imageio's `imageio:` standard
images are downloaded on first use) and are not used.
"""

from __future__ import annotations

import gzip
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from moderation.classifier.nudity import NudityDetector, load_nudity_detector
from moderation.classifier.pinned_files import package_dir
from moderation.devtools.bench.report import latency_percentiles, machine_info
from moderation.settings import NuditySettings, Settings

# Files of skimage/data Pillow cannot read (a JPEG-compressed multi-page TIFF).
_UNREADABLE = frozenset({"multipage_rgb.tif"})
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff")


class SafeImagesMissing(RuntimeError):
    """A package whose images the measurement needs is not installed."""


@dataclass(frozen=True)
class SafeImage:
    """One safe image: where it comes from, whether it shows people, how to load it."""

    name: str
    source: str
    people: bool
    load: Callable[[], Image.Image]


def _open(path: Path) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        with Image.open(path) as image:
            image.seek(0)  # the first frame of an animation or a multi-page file
            image.load()
            return image.copy()

    return load


def _site(module: str) -> Path:
    return package_dir(module, module, SafeImagesMissing)


# The images showing people (skimage's astronaut, Eileen Collins, and its cameraman;
# matplotlib's Grace Hopper); LFW's first 100 thumbnails are faces.
_PEOPLE = frozenset({"astronaut.png", "camera.png", "grace_hopper.jpg"})


def _mri_slice(path: Path) -> Callable[[], Image.Image]:
    """matplotlib's `s1045.ima.gz`: a 256 x 256 MRI slice, big-endian 16-bit, scaled to 8 bits."""

    def load() -> Image.Image:
        raw = np.frombuffer(gzip.decompress(path.read_bytes()), dtype=">u2")
        pixels = raw.reshape(256, 256).astype(np.float64)
        scaled = (255 * pixels / max(float(pixels.max()), 1.0)).astype(np.uint8)
        return Image.fromarray(scaled, mode="L")

    return load


def _lfw(path: Path, index: int) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        faces = np.load(path)
        return Image.fromarray((faces[index] * 255).round().astype(np.uint8), mode="L")

    return load


def safe_images(*, include_lfw: bool = True) -> list[SafeImage]:
    """Every safe image shipped in the installed packages (see the module's docstring)."""
    images: list[SafeImage] = []
    skimage_data = _site("skimage") / "data"
    for path in sorted(skimage_data.iterdir()):
        if path.suffix.lower() in _IMAGE_SUFFIXES and path.name not in _UNREADABLE:
            images.append(SafeImage(path.name, "scikit-image", path.name in _PEOPLE, _open(path)))
    if include_lfw:
        lfw = skimage_data / "lfw_subset.npy"
        for index in range(200):
            # skimage's docstring: the first 100 are faces, the last 100 non-faces.
            images.append(
                SafeImage(f"lfw_subset[{index}]", "scikit-image", index < 100, _lfw(lfw, index))
            )
    sample_data = _site("matplotlib") / "mpl-data" / "sample_data"
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        images.append(SafeImage(name, "matplotlib", name in _PEOPLE, _open(sample_data / name)))
    images.append(
        SafeImage("s1045.ima.gz", "matplotlib", False, _mri_slice(sample_data / "s1045.ima.gz"))
    )
    sklearn_images = _site("sklearn") / "datasets" / "images"
    for name in ("china.jpg", "flower.jpg"):
        images.append(SafeImage(name, "scikit-learn", False, _open(sklearn_images / name)))
    dots = _site("scipy") / "ndimage" / "tests" / "dots.png"
    images.append(SafeImage("dots.png", "scipy", False, _open(dots)))
    return images


def false_positives(
    detector: NudityDetector, images: Sequence[SafeImage], settings: NuditySettings
) -> dict[str, Any]:
    """Each image's top sexual score and top detection, and the share at or above each score."""
    rows: list[dict[str, Any]] = []
    for image in images:
        loaded = image.load()
        result = detector.detect(loaded)
        top = result.detections[0] if result.detections else None
        rows.append(
            {
                "image": image.name,
                "source": image.source,
                "people": image.people,
                "size": f"{loaded.width}x{loaded.height}",
                "mode": loaded.mode,
                "sexual_score": round(result.score, 4),
                "sexual_label": result.label.value if result.label else None,
                "top_label": top.label.value if top else None,
                "top_score": round(top.score, 4) if top else None,
            }
        )
    total = len(rows)

    def share(threshold: float) -> dict[str, Any]:
        hits = [row["image"] for row in rows if row["sexual_score"] >= threshold]
        return {
            "threshold": threshold,
            "images": len(hits),
            "rate": len(hits) / total,
            "hits": hits,
        }

    return {
        "images": total,
        "remove": share(settings.remove_score),
        "review": share(settings.review_score),
        "rows": rows,
    }


def megapixel_images(images: Sequence[SafeImage]) -> list[Image.Image]:
    """The colour photographs among `images`, resized to about one megapixel (aspect kept)."""
    chosen = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "grace_hopper.jpg",
              "china.jpg", "flower.jpg", "motorcycle_left.png")  # fmt: skip
    out: list[Image.Image] = []
    for image in images:
        if image.name in chosen:
            loaded = image.load().convert("RGB")
            factor = (1_000_000 / (loaded.width * loaded.height)) ** 0.5
            size = (round(loaded.width * factor), round(loaded.height * factor))
            out.append(loaded.resize(size, Image.Resampling.BICUBIC))
    return out


def _throughput(
    detector: NudityDetector, images: Sequence[Image.Image], *, callers: int, seconds: float
) -> dict[str, Any]:
    """Images/s with `callers` threads each calling `detect` in a loop for `seconds`."""
    detector.detect(images[0])  # build the session and warm the kernels outside the timing
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def call_loop(offset: int) -> None:
        index = offset
        mine: list[float] = []
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            detector.detect(images[index % len(images)])
            mine.append((time.perf_counter() - start) * 1000)
            index += 1
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    workers = [threading.Thread(target=call_loop, args=(i,)) for i in range(callers)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    return {
        "threads_per_session": detector.threads,
        "callers": callers,
        "images": len(latencies),
        "images_per_s": round(len(latencies) / wall, 1),
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else 0.0,
        "latency_ms": latency_percentiles(latencies),
    }


def preprocess_ms(images: Sequence[Image.Image], *, repeats: int = 20) -> float:
    """Mean milliseconds of the Pillow/numpy preprocessing alone for one ~1 MP image."""
    from moderation.classifier.nudity import preprocess

    start = time.perf_counter()
    for _ in range(repeats):
        for image in images:
            preprocess(image)
    return round((time.perf_counter() - start) * 1000 / (repeats * len(images)), 2)


def run_nudity_bench(settings: Settings, *, seconds: float = 10.0) -> dict[str, Any]:
    """False positives on the packaged safe images, then images/s on ~1 MP images."""
    nudity = settings.nudity
    detector = load_nudity_detector(nudity)
    images = safe_images()
    fp = false_positives(detector, images, nudity)
    photos = megapixel_images(images)
    speed = []
    # The 1-minute load average before and after: on a shared machine it says how many cores
    # others were using meanwhile.
    load_before = os.getloadavg()[0]
    for threads, callers in ((1, 1), (2, 1), (1, 2)):
        one = NudityDetector(nudity.model_path, threads=threads)
        speed.append(_throughput(one, photos, callers=callers, seconds=seconds))
    return {
        "machine": machine_info(),
        "model": detector.model_version,
        "model_path": str(detector.model_path),
        "settings": nudity.model_dump(mode="json"),
        "false_positives": fp,
        "speed": {
            "images": [f"{p.width}x{p.height}" for p in photos],
            "preprocess_ms": preprocess_ms(photos),
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "runs": speed,
        },
    }


def render_nudity(result: dict[str, Any], console: Console) -> None:
    fp = result["false_positives"]
    console.print(
        f"[bold]moderation bench --nudity[/bold] ({result['machine']['cpus']} cpus): "
        f"{result['model']}"
    )
    table = Table(title=f"safe images ({fp['images']}), top sexual score")
    for column in ("image", "source", "size", "sexual score", "sexual label", "top detection"):
        table.add_column(column)
    for row in fp["rows"]:
        if row["image"].startswith("lfw_subset[") and not row["sexual_label"]:
            continue  # 200 thumbnails: only those with a sexual detection are listed
        top = f"{row['top_label']} {row['top_score']}" if row["top_label"] else "-"
        table.add_row(
            row["image"], row["source"], row["size"], f"{row['sexual_score']:.3f}",
            row["sexual_label"] or "-", top,
        )  # fmt: skip
    console.print(table)
    for name in ("remove", "review"):
        share = fp[name]
        console.print(
            f"false positives at {name}_score {share['threshold']}: {share['images']}/"
            f"{fp['images']} ({100 * share['rate']:.1f} %)"
        )
    load = result["speed"]["load_average"]
    speed = Table(
        title=f"speed on {len(result['speed']['images'])} ~1 MP images "
        f"(load average {load[0]} before, {load[1]} after)"
    )
    for column in ("threads/session", "callers", "images/s", "mean ms", "p50 ms", "p95 ms"):
        speed.add_column(column)
    for run in result["speed"]["runs"]:
        speed.add_row(
            str(run["threads_per_session"]), str(run["callers"]), str(run["images_per_s"]),
            str(run["mean_ms"]), str(run["latency_ms"]["p50"]), str(run["latency_ms"]["p95"]),
        )  # fmt: skip
    console.print(speed)
