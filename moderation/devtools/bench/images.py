"""`moderation bench --images`: hashing and matching 1-megapixel images on one core.

Three measurements over the same photos (those that ship inside scikit-image's wheel and
matplotlib's sample photo, resized to about one megapixel and saved as JPEG; nothing is
downloaded), each against one matcher of `list_size` random PDQ hashes plus the hashes of half
of the photos, so that matches happen and are checked:

- `hash_match`: from decoded pixels: SHA-256 and MD5 of the upload, PDQ (after the reference
  hasher's 512x512 downsample), the `ImageRef`, the match. The target is >= 200 images/s.
- `prepare_match`: from the uploaded bytes in this process: decode, orient, re-encode without
  metadata, every hash, the match (what one decoder process does per upload).
- `pool_match`: the same through a `DecodePool` of one worker process (the pipe's cost added).

The process (and the pool's worker, which inherits it) is pinned to one core. PDQ on the full
1-megapixel array, without the downsample, is timed too, to show what the downsample buys.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from moderation.devtools.bench.report import latency_percentiles, machine_info, write_result
from moderation.events import ImageRef
from moderation.images.hashes import md5_hex, pdq_hash, pdq_pixels, sha256_hex
from moderation.images.hashlists import HashList, HashMatch, HashMatcher
from moderation.images.intake import ImageLimits, prepare
from moderation.images.pool import DecodePool
from moderation.taxonomy import Category

PHOTO_FILES = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
)
MEGAPIXEL = 1_000_000


def _photo_paths() -> list[Path]:
    import matplotlib
    import skimage

    bundled = Path(skimage.__file__).parent / "data"
    grace = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return [bundled / name for name in PHOTO_FILES] + [grace]


def _one_megapixel(path: Path) -> Image.Image:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    scale = (MEGAPIXEL / (rgb.width * rgb.height)) ** 0.5
    return rgb.resize((round(rgb.width * scale), round(rgb.height * scale)))


def _pin_one_core() -> tuple[int, set[int]]:
    before = os.sched_getaffinity(0)
    core = max(before)
    os.sched_setaffinity(0, {core})
    return core, before


def _ref_from_pixels(upload: bytes, image: Image.Image) -> ImageRef:
    pdq, quality = pdq_hash(pdq_pixels(image))
    digest = sha256_hex(upload)
    return ImageRef(
        sha256=digest,
        original_sha256=digest,
        original_md5=md5_hex(upload),
        pdq=pdq,
        pdq_quality=quality,
        format="jpeg",
        width=image.width,
        height=image.height,
        size_bytes=len(upload),
        uri="bench://",
    )


def _phase(
    count: int, items: int, run: Callable[[int], HashMatch | None], expected: list[bool]
) -> dict[str, Any]:
    latencies: list[float] = []
    wrong = 0
    started = time.perf_counter()
    for index in range(count):
        item = index % items
        begin = time.perf_counter()
        found = run(item)
        latencies.append((time.perf_counter() - begin) * 1000)
        wrong += (found is not None) != expected[item]
    wall = time.perf_counter() - started
    return {
        "images": count,
        "seconds": round(wall, 3),
        "images_per_s": round(count / wall, 1),
        "latency_ms": latency_percentiles(latencies),
        "wrong_match_outcomes": wrong,
    }


def run_images_bench(
    *, images: int = 1_000, list_size: int = 10_000, console: Console | None = None
) -> dict[str, Any]:
    """Measure, write bench-results/bench-images-<stamp>.json, and return the result."""

    def say(message: str) -> None:
        if console is not None:
            console.print(message)

    core, affinity = _pin_one_core()
    try:
        photos = [_one_megapixel(path) for path in _photo_paths()]
        uploads = []
        for image in photos:
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=90)
            uploads.append(out.getvalue())
        limits = ImageLimits(timeout_seconds=30.0)
        prepared = [prepare(upload, limits) for upload in uploads]
        listed = [index % 2 == 0 for index in range(len(photos))]
        rng = np.random.default_rng(16)
        noise = HashList.of(
            "random", Category.SPAM, pdq=[rng.bytes(32).hex() for _ in range(list_size)]
        )
        known = HashList.of(
            "known",
            Category.VIOLENCE,
            # Listed as a partner would list them: hashed from a re-encoded copy, not our bytes.
            pdq=[p.hashes.pdq for p, hit in zip(prepared, listed, strict=True) if hit],
        )
        matcher = HashMatcher([noise, known], pdq_threshold=31, min_quality=50)
        say(f"[bench] {len(photos)} photos of ~1 MP, {matcher.pdq_count} PDQ hashes, core {core}")

        def hash_match(item: int) -> HashMatch | None:
            return matcher.match(_ref_from_pixels(uploads[item], photos[item]))

        def prepare_match(item: int) -> HashMatch | None:
            return matcher.match(prepare(uploads[item], limits).image_ref("bench://"))

        full = [np.asarray(image) for image in photos]

        def full_pdq(item: int) -> HashMatch | None:
            pdq_hash(full[item])
            return matcher.match(_ref_from_pixels(uploads[item], photos[item]))

        phases: dict[str, Any] = {}
        say("[bench] hash_match")
        phases["hash_match"] = _phase(images, len(photos), hash_match, listed)
        say("[bench] hash_match without the 512x512 downsample")
        phases["hash_match_full_resolution"] = _phase(
            max(50, images // 4), len(photos), full_pdq, listed
        )
        say("[bench] prepare_match")
        phases["prepare_match"] = _phase(max(50, images // 4), len(photos), prepare_match, listed)
        with DecodePool(limits, workers=1) as pool:
            pool.start()

            def pool_match(item: int) -> HashMatch | None:
                return matcher.match(pool.prepare(uploads[item]).image_ref("bench://"))

            say("[bench] pool_match")
            phases["pool_match"] = _phase(max(50, images // 4), len(photos), pool_match, listed)
        match_only = _phase(
            images,
            len(photos),
            lambda item: matcher.match(prepared[item].image_ref("bench://")),
            listed,
        )
        phases["match_only"] = match_only
    finally:
        os.sched_setaffinity(0, affinity)
    result: dict[str, Any] = {
        "benchmark": "images",
        "machine": machine_info(),
        "pinned_core": core,
        "photos": [path.name for path in _photo_paths()],
        "pixels": [image.width * image.height for image in photos],
        "upload_bytes_mean": round(sum(map(len, uploads)) / len(uploads)),
        "pdq_hashes_listed": matcher.pdq_count,
        "pdq_threshold": 31,
        "phases": phases,
        "target_images_per_s": 200,
    }
    result["results_file"] = str(write_result(result, "bench-images-{stamp}.json"))
    return result


def render_images(result: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"images on one core (core {result['pinned_core']}), "
        f"{result['pdq_hashes_listed']:,} PDQ hashes listed"
    )
    for column in ("phase", "images/s", "p50 ms", "p99 ms", "wrong outcomes"):
        table.add_column(column)
    for name, phase in result["phases"].items():
        table.add_row(
            name,
            f"{phase['images_per_s']:,}",
            str(phase["latency_ms"]["p50"]),
            str(phase["latency_ms"]["p99"]),
            str(phase["wrong_match_outcomes"]),
        )
    console.print(table)
    console.print(f"target: hash_match >= {result['target_images_per_s']} images/s")
    console.print(f"written to {result['results_file']}")
