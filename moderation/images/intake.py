"""Intake of uploaded images: limits, decoding, re-encoding without metadata, hashing.

Every upload is hostile. In order, and the first failure raises `ImageRejected` with a code:

1. size in bytes (`too_large`, `empty`), before anything reads it;
2. the format, told by the file's own magic bytes, never by the client's content type
   (`unsupported_format`: a PDF, text, TIFF, ... or a format these settings do not accept);
3. width x height from the header, before decoding (`too_many_pixels`); Pillow's own
   decompression-bomb guard stays on behind it;
4. decoding the first frame (`corrupt`: truncated or malformed data);
5. the EXIF orientation is applied, then the pixels are re-encoded in a fresh file with no
   metadata at all: EXIF (GPS, camera), XMP, text chunks and comments are gone. The ICC
   profile is dropped too (it is an arbitrary blob an uploader controls; wide-gamut photos
   shift slightly in colour, which does not matter for moderation). JPEG stays JPEG (quality
   `jpeg_quality`), PNG stays PNG, WebP stays WebP; a GIF is stored as the PNG of its first
   frame. An animation (GIF, WebP, APNG) is reduced to its first frame: the stored image is
   exactly the one hashed, classified and reviewed, and the later frames are never kept.

`sanitize` and `prepare` run in the caller's thread with no time budget: use them in a
process that may be stalled (a test, the decoder's own process). Services go through
`moderation.images.pool.DecodePool`, which runs `prepare` in a separate, killable process
under `decode_timeout_seconds` (`timeout`) and has an async entry point for the API; its
docstring says why a process and not a thread.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from moderation.events import ImageRef
from moderation.images.hashes import ImageHashes, image_hashes, pdq_pixels

if TYPE_CHECKING:
    from moderation.settings import ImageSettings


class RejectCode(StrEnum):
    EMPTY = "empty"
    TOO_LARGE = "too_large"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TOO_MANY_PIXELS = "too_many_pixels"
    CORRUPT = "corrupt"
    TIMEOUT = "timeout"
    TOO_MANY_IMAGES = "too_many_images"


# The HTTP status an API answers each rejection with.
HTTP_STATUS: dict[RejectCode, int] = {
    RejectCode.EMPTY: 422,
    RejectCode.TOO_LARGE: 413,
    RejectCode.UNSUPPORTED_FORMAT: 415,
    RejectCode.TOO_MANY_PIXELS: 413,
    RejectCode.CORRUPT: 422,
    RejectCode.TIMEOUT: 422,
    RejectCode.TOO_MANY_IMAGES: 413,
}


class ImageRejected(ValueError):
    """An upload refused: `code` for machines, the message for people."""

    def __init__(self, code: RejectCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def __reduce__(self) -> tuple[type[ImageRejected], tuple[RejectCode, str]]:
        # Crosses the decoder's process boundary intact.
        return (ImageRejected, (self.code, self.message))


@dataclass(frozen=True)
class ImageLimits:
    """What an upload may be (from `ImageSettings`; plain data, sent to decoder processes)."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 25_000_000
    formats: frozenset[str] = frozenset({"jpeg", "png", "webp", "gif"})
    jpeg_quality: int = 90
    timeout_seconds: float = 5.0

    @classmethod
    def from_settings(cls, settings: ImageSettings) -> ImageLimits:
        return cls(
            max_bytes=settings.max_bytes,
            max_pixels=settings.max_pixels,
            formats=frozenset(settings.formats),
            jpeg_quality=settings.jpeg_quality,
            timeout_seconds=settings.decode_timeout_seconds,
        )


# Format name -> (Pillow's plugin, how it is stored, the stored content type).
_FORMATS: dict[str, tuple[str, str, str]] = {
    "jpeg": ("JPEG", "jpeg", "image/jpeg"),
    "png": ("PNG", "png", "image/png"),
    "webp": ("WEBP", "webp", "image/webp"),
    "gif": ("GIF", "png", "image/png"),
}

# Formats recognised only to name them in the refusal.
_OTHER_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"<svg", "an SVG document"),
    (b"<?xml", "an XML document"),
    (b"\x00\x00\x01\x00", "an ICO image"),
)


def sniff_format(data: bytes) -> str | None:
    """`jpeg`, `png`, `webp` or `gif` from the magic bytes; None for anything else."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _describe_unknown(data: bytes) -> str:
    head = data[:64].lstrip()
    for signature, name in _OTHER_SIGNATURES:
        if head.startswith(signature):
            return name
    if data[8:12] == b"ftyp":
        return "an ISO media file (HEIC, AVIF or video)"
    try:
        head_text = data[:512].decode("utf-8")
    except UnicodeDecodeError:
        return "an unknown binary format"
    if any(ord(char) < 32 and char not in "\t\n\r" for char in head_text):
        return "an unknown binary format"
    return "text"


@dataclass(frozen=True)
class SanitizedImage:
    """An upload re-encoded without metadata, and the pixels PDQ hashes."""

    data: bytes
    format: str  # of `data`: jpeg, png, webp
    content_type: str
    width: int
    height: int
    source_format: str  # as uploaded: jpeg, png, webp, gif
    pdq_pixels: npt.NDArray[np.uint8]  # RGB, at most 512x512 (`hashes.pdq_pixels`)


@dataclass(frozen=True)
class PreparedImage:
    """A sanitized image with its hashes: what the object store and the events need."""

    data: bytes
    format: str
    content_type: str
    width: int
    height: int
    hashes: ImageHashes

    def image_ref(self, uri: str) -> ImageRef:
        """The event's reference to this image, once the store has put it at `uri`."""
        return ImageRef(
            sha256=self.hashes.sha256,
            original_sha256=self.hashes.original_sha256,
            original_md5=self.hashes.original_md5,
            pdq=self.hashes.pdq,
            pdq_quality=self.hashes.pdq_quality,
            format=self.format,
            width=self.width,
            height=self.height,
            size_bytes=len(self.data),
            uri=uri,
        )


def check_count(count: int, settings: ImageSettings) -> None:
    """Refuse more images in one post than `max_per_post`."""
    if count > settings.max_per_post:
        raise ImageRejected(
            RejectCode.TOO_MANY_IMAGES,
            f"{count} images in one post; at most {settings.max_per_post} are accepted",
        )


def _open(data: bytes, limits: ImageLimits) -> tuple[Image.Image, str]:
    if not data:
        raise ImageRejected(RejectCode.EMPTY, "the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageRejected(
            RejectCode.TOO_LARGE,
            f"the image is {len(data):,} bytes; at most {limits.max_bytes:,} are accepted",
        )
    kind = sniff_format(data)
    accepted = ", ".join(sorted(limits.formats))
    if kind is None:
        raise ImageRejected(
            RejectCode.UNSUPPORTED_FORMAT,
            f"not an accepted image: the content is {_describe_unknown(data)} "
            f"(accepted, told by content: {accepted})",
        )
    if kind not in limits.formats:
        raise ImageRejected(
            RejectCode.UNSUPPORTED_FORMAT, f"{kind} images are not accepted (accepted: {accepted})"
        )
    try:
        with warnings.catch_warnings():
            # Pillow's guard stays behind ours: its error (over twice its limit) refuses here,
            # its warning waits for our own check below, which says more.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[_FORMATS[kind][0]])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(RejectCode.TOO_MANY_PIXELS, f"a decompression bomb: {error}") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageRejected(
            RejectCode.CORRUPT, f"the {kind} image's header cannot be read: {error}"
        ) from error
    width, height = image.size
    if width <= 0 or height <= 0 or width * height > limits.max_pixels:
        raise ImageRejected(
            RejectCode.TOO_MANY_PIXELS,
            f"the image is {width}x{height} = {width * height:,} pixels; at most "
            f"{limits.max_pixels:,} are accepted",
        )
    return image, kind


def _decode(image: Image.Image, kind: str) -> Image.Image:
    """The first frame, decoded, turned upright (EXIF orientation)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            upright = ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(RejectCode.TOO_MANY_PIXELS, f"a decompression bomb: {error}") from error
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError) as error:
        raise ImageRejected(
            RejectCode.CORRUPT, f"the {kind} image is truncated or corrupt: {error}"
        ) from error
    return upright


def _stored_mode(image: Image.Image, stored: str) -> Image.Image:
    mode = image.mode
    if stored == "jpeg":
        return image if mode in ("RGB", "L") else image.convert("RGB")
    if stored == "webp":
        return (
            image
            if mode in ("RGB", "RGBA")
            else image.convert("RGBA" if _has_alpha(image) else "RGB")
        )
    # PNG keeps palettes, grey, 16-bit and alpha; exotic modes become RGB(A).
    if mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I"):
        return image
    return image.convert("RGBA" if _has_alpha(image) else "RGB")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def _encode(image: Image.Image, stored: str, limits: ImageLimits) -> bytes:
    clean = _stored_mode(image, stored)
    # A fresh `info`: no EXIF, ICC, XMP, text or comment can ride along (transparency is pixels).
    transparency = clean.info.get("transparency")
    clean.info = {} if transparency is None else {"transparency": transparency}
    out = io.BytesIO()
    if stored == "jpeg":
        clean.save(out, format="JPEG", quality=limits.jpeg_quality)
    elif stored == "webp":
        clean.save(out, format="WEBP", quality=limits.jpeg_quality)
    else:
        # zlib level 1: a 25-megapixel PNG must re-encode within the time budget.
        clean.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def sanitize(data: bytes, limits: ImageLimits) -> SanitizedImage:
    """Check, decode and re-encode an upload without metadata (in this thread, no budget).

    Raises:
        ImageRejected: the upload breaks a limit or cannot be decoded.
    """
    image, kind = _open(data, limits)
    with image:
        upright = _decode(image, kind)
        _, stored, content_type = _FORMATS[kind]
        encoded = _encode(upright, stored, limits)
        pixels = pdq_pixels(upright)
        return SanitizedImage(
            data=encoded,
            format=stored,
            content_type=content_type,
            width=upright.width,
            height=upright.height,
            source_format=kind,
            pdq_pixels=pixels,
        )


def prepare(data: bytes, limits: ImageLimits) -> PreparedImage:
    """`sanitize`, then every hash: what the decoder process runs for each upload."""
    clean = sanitize(data, limits)
    return PreparedImage(
        data=clean.data,
        format=clean.format,
        content_type=clean.content_type,
        width=clean.width,
        height=clean.height,
        hashes=image_hashes(original=data, stored=clean.data, pixels=clean.pdq_pixels),
    )
