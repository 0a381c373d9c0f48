"""Test images: photos that ship inside installed packages, and hostile files made in place.

Nothing is downloaded: scikit-image's bundled images (the files inside its wheel, not its
`pooch` downloads) and matplotlib's sample photo. The hostile files (a decompression-bomb PNG,
a header claiming 100 megapixels) are written chunk by chunk, never held as pixels.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import matplotlib
import skimage
from PIL import Image

from moderation.events import ImageRef

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"

# Distinct natural photos (people, animals, objects, scenes) inside the scikit-image wheel.
PHOTOS = {
    "astronaut": SKIMAGE_DATA / "astronaut.png",
    "coffee": SKIMAGE_DATA / "coffee.png",
    "chelsea": SKIMAGE_DATA / "chelsea.png",
    "rocket": SKIMAGE_DATA / "rocket.jpg",
    "motorcycle": SKIMAGE_DATA / "motorcycle_left.png",
    "camera": SKIMAGE_DATA / "camera.png",
    "hubble": SKIMAGE_DATA / "hubble_deep_field.jpg",
    "retina": SKIMAGE_DATA / "retina.jpg",
    "grace_hopper": GRACE_HOPPER,
}


def photo(name: str) -> Image.Image:
    """A bundled photo as RGB."""
    with Image.open(PHOTOS[name]) as image:
        return image.convert("RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_of_zeros(width: int, height: int, *, rows: int | None = None) -> bytes:
    """A greyscale PNG of `width` x `height` black pixels, made without holding its pixels.

    With `rows`, only that many rows of image data are written (a header that promises more
    than the file holds). All zeros compress about 1000:1: a decompression bomb.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    parts = []
    for _ in range(height if rows is None else rows):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )


def image_ref(seed: str) -> ImageRef:
    """An `ImageRef` with distinct, well-formed hashes derived from `seed` (no bytes behind it)."""
    digest = hashlib.sha256(seed.encode()).hexdigest()
    return ImageRef(
        sha256=hashlib.sha256(f"stored-{seed}".encode()).hexdigest(),
        original_sha256=digest,
        original_md5=hashlib.md5(seed.encode()).hexdigest(),
        pdq=hashlib.sha256(f"pdq-{seed}".encode()).hexdigest(),
        pdq_quality=100,
        format="jpeg",
        width=10,
        height=10,
        size_bytes=100,
        uri=f"file:///images/{digest}",
    )
