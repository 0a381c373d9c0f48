"""Intake of uploads: limits by content, malformed and hostile files, metadata stripped."""

from __future__ import annotations

import io
import pickle
import time

import pytest
from PIL import Image, PngImagePlugin

from moderation.events import ImageRef
from moderation.images.hashes import md5_hex, sha256_hex
from moderation.images.intake import (
    ImageLimits,
    ImageRejected,
    RejectCode,
    check_count,
    prepare,
    sanitize,
    sniff_format,
)
from moderation.settings import ImageSettings
from tests.image_samples import encode, photo, png_of_zeros

LIMITS = ImageLimits()


def rejected(data: bytes, limits: ImageLimits = LIMITS) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        sanitize(data, limits)
    return caught.value


def test_a_jpeg_is_re_encoded_as_a_jpeg_of_the_same_size() -> None:
    upload = encode(photo("grace_hopper"), "JPEG", quality=95)
    clean = sanitize(upload, LIMITS)
    assert (clean.format, clean.content_type, clean.source_format) == ("jpeg", "image/jpeg", "jpeg")
    assert (clean.width, clean.height) == (512, 600)
    assert clean.data != upload
    with Image.open(io.BytesIO(clean.data)) as stored:
        assert stored.format == "JPEG"
        assert stored.size == (512, 600)
    assert clean.pdq_pixels.shape == (512, 512, 3)  # 600 > 512: resized like PDQ's reference


@pytest.mark.parametrize(("fmt", "stored"), [("PNG", "png"), ("WEBP", "webp")])
def test_png_and_webp_keep_their_format(fmt: str, stored: str) -> None:
    clean = sanitize(encode(photo("coffee"), fmt), LIMITS)
    assert clean.format == stored
    with Image.open(io.BytesIO(clean.data)) as reopened:
        assert reopened.format == fmt
        assert reopened.size == (600, 400)


def test_a_gif_is_stored_as_the_png_of_its_first_frame() -> None:
    first = Image.new("RGB", (30, 20), (255, 0, 0))
    second = Image.new("RGB", (30, 20), (0, 0, 255))
    out = io.BytesIO()
    first.save(out, format="GIF", save_all=True, append_images=[second], duration=100)
    clean = sanitize(out.getvalue(), LIMITS)
    assert (clean.format, clean.source_format) == ("png", "gif")
    with Image.open(io.BytesIO(clean.data)) as stored:
        assert getattr(stored, "n_frames", 1) == 1
        assert stored.convert("RGB").getpixel((5, 5)) == (255, 0, 0)


def test_exif_is_removed_after_its_orientation_is_applied() -> None:
    # 40 wide x 20 high: red on the left, blue on the right. Orientation 6 means the camera
    # was turned: shown upright the image is 20 x 40 with red on top.
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    exif[0x010F] = "SpyCam"  # Make
    exif[0x0131] = "editor 1.0"  # Software
    upload = encode(image, "JPEG", quality=95, exif=exif.tobytes())
    with Image.open(io.BytesIO(upload)) as original:
        assert original.getexif()[0x010F] == "SpyCam"

    clean = sanitize(upload, LIMITS)
    assert (clean.width, clean.height) == (20, 40)
    with Image.open(io.BytesIO(clean.data)) as stored:
        assert "exif" not in stored.info
        assert len(stored.getexif()) == 0
        rgb = stored.convert("RGB")
        top, bottom = rgb.getpixel((10, 5)), rgb.getpixel((10, 35))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and top[2] < 60  # red on top
    assert bottom[2] > 200 and bottom[0] < 60  # blue below
    assert b"SpyCam" not in clean.data


def test_png_text_chunks_and_icc_profile_are_dropped() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "someone@example.org")
    info.add_text("Location", "51.5,-0.1", zip=True)
    upload = encode(photo("chelsea"), "PNG", pnginfo=info, icc_profile=b"fake-icc-profile" * 8)
    with Image.open(io.BytesIO(upload)) as original:
        assert "Author" in original.info
    clean = sanitize(upload, LIMITS)
    with Image.open(io.BytesIO(clean.data)) as stored:
        assert "Author" not in stored.info
        assert "Location" not in stored.info
        assert "icc_profile" not in stored.info
    assert b"someone@example.org" not in clean.data


def test_transparency_survives() -> None:
    image = Image.new("RGBA", (10, 10), (0, 255, 0, 0))
    clean = sanitize(encode(image, "PNG"), LIMITS)
    with Image.open(io.BytesIO(clean.data)) as stored:
        assert stored.mode == "RGBA"
        assert stored.getpixel((1, 1)) == (0, 255, 0, 0)


def test_too_many_bytes_is_refused_before_reading() -> None:
    upload = encode(photo("astronaut"), "PNG")
    error = rejected(upload, ImageLimits(max_bytes=len(upload) - 1))
    assert error.code is RejectCode.TOO_LARGE
    assert error.http_status == 413
    assert f"{len(upload):,} bytes" in str(error)


def test_an_empty_upload_is_refused() -> None:
    assert rejected(b"").code is RejectCode.EMPTY


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF", "a PDF document"),
        (b"just some text that claims to be image/jpeg", "text"),
        (encode(Image.new("RGB", (8, 8)), "TIFF"), "a TIFF image"),
        (encode(Image.new("RGB", (8, 8)), "BMP"), "a BMP image"),
        (b"\x00\x01\x02\x03\xfe\xfd" * 20, "an unknown binary format"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00", "an unknown binary format"),
    ],
)
def test_wrong_types_are_told_by_content(data: bytes, named: str) -> None:
    error = rejected(data)
    assert error.code is RejectCode.UNSUPPORTED_FORMAT
    assert error.http_status == 415
    assert named in str(error)


def test_a_format_the_settings_do_not_accept_is_refused() -> None:
    error = rejected(encode(photo("coffee"), "PNG"), ImageLimits(formats=frozenset({"jpeg"})))
    assert error.code is RejectCode.UNSUPPORTED_FORMAT
    assert "png images are not accepted" in str(error)


def test_sniffing_reads_magic_bytes() -> None:
    assert sniff_format(encode(photo("coffee"), "JPEG")) == "jpeg"
    assert sniff_format(encode(photo("coffee"), "WEBP")) == "webp"
    assert sniff_format(b"GIF89a....") == "gif"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None


def test_a_truncated_jpeg_is_corrupt() -> None:
    upload = encode(photo("astronaut"), "JPEG", quality=90)
    error = rejected(upload[: len(upload) // 2])
    assert error.code is RejectCode.CORRUPT
    assert "truncated or corrupt" in str(error)


def test_a_truncated_png_is_corrupt() -> None:
    upload = encode(photo("astronaut"), "PNG")
    assert rejected(upload[: len(upload) // 2]).code is RejectCode.CORRUPT


def test_garbage_after_a_valid_jpeg_signature_is_corrupt() -> None:
    assert rejected(b"\xff\xd8\xff\xe0" + b"\x13" * 500).code is RejectCode.CORRUPT


def test_a_decompression_bomb_png_is_refused_from_its_header() -> None:
    bomb = png_of_zeros(10_000, 10_000)  # 100 megapixels in under 100 kB
    assert len(bomb) < 150_000
    started = time.perf_counter()
    error = rejected(bomb)
    assert time.perf_counter() - started < 1.0  # refused without decoding
    assert error.code is RejectCode.TOO_MANY_PIXELS
    assert "10000x10000 = 100,000,000 pixels" in str(error)


def test_a_100_megapixel_jpeg_header_is_refused() -> None:
    upload = bytearray(encode(photo("coffee"), "JPEG"))
    sof = upload.index(b"\xff\xc0")  # baseline frame header: FFC0, length, precision, h, w
    upload[sof + 5 : sof + 9] = (10_000).to_bytes(2, "big") + (10_000).to_bytes(2, "big")
    error = rejected(bytes(upload))
    assert error.code is RejectCode.TOO_MANY_PIXELS
    assert "100,000,000 pixels" in str(error)


def test_pillows_bomb_guard_stays_on_behind_the_limit() -> None:
    # With our limit out of the way, Pillow's own guard (2 x 89 megapixels) still refuses.
    error = rejected(png_of_zeros(20_000, 10_000, rows=1), ImageLimits(max_pixels=10**10))
    assert error.code is RejectCode.TOO_MANY_PIXELS
    assert "decompression bomb" in str(error)


def test_prepare_hashes_the_upload_and_the_stored_bytes() -> None:
    upload = encode(photo("rocket"), "JPEG")
    prepared = prepare(upload, LIMITS)
    assert prepared.hashes.original_sha256 == sha256_hex(upload)
    assert prepared.hashes.original_md5 == md5_hex(upload)
    assert prepared.hashes.sha256 == sha256_hex(prepared.data)
    assert prepared.hashes.pdq_quality >= 50
    ref = prepared.image_ref("file:///images/x")
    assert isinstance(ref, ImageRef)
    assert (ref.width, ref.height, ref.format) == (640, 427, "jpeg")
    assert ref.size_bytes == len(prepared.data)


def test_too_many_images_per_post() -> None:
    settings = ImageSettings()
    check_count(4, settings)
    with pytest.raises(ImageRejected) as caught:
        check_count(5, settings)
    assert caught.value.code is RejectCode.TOO_MANY_IMAGES
    assert "at most 4" in str(caught.value)


def test_a_rejection_crosses_a_process_boundary_intact() -> None:
    error = pickle.loads(pickle.dumps(ImageRejected(RejectCode.CORRUPT, "broken")))
    assert (error.code, error.message, str(error)) == (RejectCode.CORRUPT, "broken", "broken")


def test_limits_follow_the_settings() -> None:
    limits = ImageLimits.from_settings(ImageSettings(max_pixels=1000, formats=("png",)))
    assert limits.max_pixels == 1000
    assert limits.formats == frozenset({"png"})
    assert rejected(encode(photo("coffee"), "PNG"), limits).code is RejectCode.TOO_MANY_PIXELS
