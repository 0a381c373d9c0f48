"""The hashes of an image: exact (SHA-256, MD5) and perceptual (PDQ), and their distances.

PDQ is Meta's perceptual hash (ThreatExchange `pdq/`), computed with the `pdqhash` binding of
the reference C++ code. Like the reference hasher (`pdq/cpp/io/pdqio.cpp`, `DOWNSAMPLE_DIMS`),
an image larger than 512 pixels on a side is first resized to 512x512 with nearest-neighbour
sampling (CImg's default): the two-pass Jarosz filter on a full 1-megapixel buffer costs four
times as much and the hash differs from the downsampled one by a few bits only.

Hex form: the reference's `Hash256::format` (bit 255 first), so hashes from shared lists compare.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pdqhash  # type: ignore[import-untyped]  # a Cython binding without type information
from PIL import Image

PDQ_DOWNSAMPLE = 512
PDQ_HEX_DIGITS = 64
PDQ_BITS = 256

PackedPdq = npt.NDArray[np.uint64]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5_hex(data: bytes) -> str:
    # MD5 is not used for security here: shared hash lists of known files carry it.
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def pdq_pixels(image: Image.Image) -> npt.NDArray[np.uint8]:
    """The RGB array PDQ hashes: the image, resized to 512x512 when a side is larger."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Deep grey (16-bit PNG): Pillow's conversion to RGB clips instead of scaling.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        image = Image.fromarray(np.clip(values * (255.0 / top), 0, 255).astype(np.uint8), "L")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if rgb.width > PDQ_DOWNSAMPLE or rgb.height > PDQ_DOWNSAMPLE:
        rgb = rgb.resize((PDQ_DOWNSAMPLE, PDQ_DOWNSAMPLE), Image.Resampling.NEAREST)
    return np.asarray(rgb, dtype=np.uint8)


def pdq_hash(pixels: npt.NDArray[np.uint8]) -> tuple[str, int]:
    """PDQ of an RGB uint8 array (height, width, 3): 64 hex digits and the quality (0-100).

    Pass `pdq_pixels(image)`: a larger array is hashed as it is, only more slowly.
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"PDQ needs an RGB uint8 array, got {pixels.dtype} {pixels.shape}")
    bits, quality = pdqhash.compute(np.ascontiguousarray(pixels))
    # `bits[0]` is bit 255, the reference's first printed bit: packbits keeps that order.
    packed = np.packbits(np.asarray(bits, dtype=np.uint8))
    return packed.tobytes().hex(), int(quality)


def pack_pdq(hexes: list[str] | tuple[str, ...]) -> PackedPdq:
    """PDQ hashes as an (n, 4) uint64 array, the form `pdq_distances` compares."""
    if not hexes:
        return np.zeros((0, 4), dtype=np.uint64)
    raw = b"".join(bytes.fromhex(value) for value in hexes)
    if len(raw) != 32 * len(hexes):
        raise ValueError("a PDQ hash is 64 hex digits")
    return np.frombuffer(raw, dtype=np.uint64).reshape(len(hexes), 4)


def pdq_distances(query: str, packed: PackedPdq) -> npt.NDArray[np.int64]:
    """The Hamming distance of `query` to every row of `packed` (XOR, then popcount)."""
    target = pack_pdq([query])
    counts = np.bitwise_count(np.bitwise_xor(packed, target))
    distances: npt.NDArray[np.int64] = counts.sum(axis=1, dtype=np.int64)
    return distances


def hamming_distance(first: str, second: str) -> int:
    """The Hamming distance of two PDQ hashes given as hex."""
    if len(first) != PDQ_HEX_DIGITS or len(second) != PDQ_HEX_DIGITS:
        raise ValueError("a PDQ hash is 64 hex digits")
    return (int(first, 16) ^ int(second, 16)).bit_count()


@dataclass(frozen=True)
class ImageHashes:
    """Every hash of one image (the fields of `ImageRef` that are hashes)."""

    sha256: str  # of the stored, sanitized bytes
    original_sha256: str  # of the bytes as uploaded
    original_md5: str
    pdq: str
    pdq_quality: int


def image_hashes(*, original: bytes, stored: bytes, pixels: npt.NDArray[np.uint8]) -> ImageHashes:
    """The hashes of an upload (`original`), its sanitized bytes and its `pdq_pixels`."""
    pdq, quality = pdq_hash(pixels)
    return ImageHashes(
        sha256=sha256_hex(stored),
        original_sha256=sha256_hex(original),
        original_md5=md5_hex(original),
        pdq=pdq,
        pdq_quality=quality,
    )
