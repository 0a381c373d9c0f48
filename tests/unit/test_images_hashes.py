"""Hashes and matching: near-duplicates of a listed photo match by PDQ, unrelated photos do not."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from moderation.events import ImageRef
from moderation.images.hashes import (
    hamming_distance,
    pack_pdq,
    pdq_distances,
    pdq_hash,
    pdq_pixels,
)
from moderation.images.hashlists import HashKind, HashList, HashMatcher
from moderation.images.intake import ImageLimits, PreparedImage, prepare
from moderation.taxonomy import Category
from tests.image_samples import PHOTOS, encode, photo

THRESHOLD = 31  # ThreatExchange's PDQ_CONFIDENT_MATCH_THRESHOLD
LIMITS = ImageLimits()


def pdq_of(image: Image.Image) -> str:
    return pdq_hash(pdq_pixels(image))[0]


def near_duplicates(image: Image.Image) -> dict[str, Image.Image]:
    """What a re-uploader does to a picture: resize, recompress, crop a little, brighten.

    The crop is 1% a side: PDQ is not crop-resistant (5% a side moves these photos some 86
    bits, 2% about 35; README "Images").
    """
    width, height = image.size
    dx, dy = max(1, int(width * 0.01)), max(1, int(height * 0.01))
    recompressed = Image.open(io.BytesIO(encode(image, "JPEG", quality=40)))
    return {
        "resized to half": image.resize((width // 2, height // 2), Image.Resampling.LANCZOS),
        "resized up 1.5x": image.resize((width * 3 // 2, height * 3 // 2)),
        "JPEG quality 40": recompressed.convert("RGB"),
        "cropped 1% a side": image.crop((dx, dy, width - dx, height - dy)),
        "brighter 10%": ImageEnhance.Brightness(image).enhance(1.1),
        "darker 10%": ImageEnhance.Brightness(image).enhance(0.9),
    }


@pytest.mark.parametrize("name", ["grace_hopper", "astronaut", "coffee", "chelsea", "rocket"])
def test_near_duplicates_are_within_the_threshold(name: str) -> None:
    original = photo(name)
    listed = pdq_of(original)
    distances = {
        change: hamming_distance(listed, pdq_of(copy))
        for change, copy in near_duplicates(original).items()
    }
    assert all(distance <= THRESHOLD for distance in distances.values()), distances


def test_unrelated_photos_are_far_apart() -> None:
    hashes = {name: pdq_of(photo(name)) for name in PHOTOS}
    closest = min(
        (hamming_distance(hashes[a], hashes[b]), a, b)
        for a, b in itertools.combinations(sorted(hashes), 2)
    )
    # Unrelated images sit near 128 bits apart; none may come near the threshold.
    assert closest[0] > 2 * THRESHOLD, closest


def test_a_near_duplicate_upload_matches_the_listed_image_and_an_unrelated_one_does_not() -> None:
    listed = prepare(encode(photo("grace_hopper"), "JPEG", quality=92), LIMITS)
    matcher = HashMatcher(
        [HashList.of("known-bad", Category.VIOLENCE, pdq=[listed.hashes.pdq])],
        pdq_threshold=THRESHOLD,
    )
    original = photo("grace_hopper")
    reupload = original.resize((400, 469)).crop((4, 4, 396, 465))
    copy = prepare(encode(reupload, "WEBP", quality=60), LIMITS)
    found = matcher.match(ref(copy))
    assert found is not None
    assert (found.list_name, found.category, found.kind) == (
        "known-bad",
        Category.VIOLENCE,
        HashKind.PDQ,
    )
    assert 0 < found.distance <= THRESHOLD
    unrelated = prepare(encode(photo("astronaut"), "JPEG"), LIMITS)
    assert matcher.match(ref(unrelated)) is None


def test_exact_hashes_match_first_and_name_their_kind() -> None:
    upload = encode(photo("coffee"), "PNG")
    image = prepare(upload, LIMITS)
    by_md5 = HashMatcher(
        [
            HashList.of("perceptual", Category.SPAM, pdq=[image.hashes.pdq]),
            HashList.of("files", Category.HATE, md5=[image.hashes.original_md5.upper()]),
        ]
    ).match(ref(image))
    assert by_md5 is not None
    assert (by_md5.list_name, by_md5.kind, by_md5.distance) == ("files", HashKind.MD5, 0)

    by_original = HashMatcher(
        [HashList.of("originals", Category.ILLICIT, sha256=[image.hashes.original_sha256])]
    ).match(ref(image))
    assert by_original is not None and by_original.kind is HashKind.SHA256

    by_stored = HashMatcher(
        [HashList.of("ours", Category.ILLICIT, sha256=[image.hashes.sha256])]
    ).match(ref(image))
    assert by_stored is not None and by_stored.list_name == "ours"


def test_a_low_quality_image_is_matched_by_exact_hashes_only() -> None:
    flat = prepare(encode(Image.new("RGB", (300, 300), (120, 120, 120)), "PNG"), LIMITS)
    assert flat.hashes.pdq_quality < 50
    lists = [HashList.of("flat", Category.SPAM, pdq=[flat.hashes.pdq])]
    assert HashMatcher(lists, min_quality=50).match(ref(flat)) is None
    assert HashMatcher(lists, min_quality=0).match(ref(flat)) is not None


def test_the_nearest_of_many_pdq_hashes_wins() -> None:
    image = prepare(encode(photo("chelsea"), "JPEG"), LIMITS)
    rng = np.random.default_rng(7)
    noise = [rng.bytes(32).hex() for _ in range(5_000)]
    near = flip_bits(image.hashes.pdq, 12)
    nearer = flip_bits(image.hashes.pdq, 3)
    matcher = HashMatcher(
        [
            HashList.of("noise", Category.SPAM, pdq=noise),
            HashList.of("near", Category.HATE, pdq=[near]),
            HashList.of("nearer", Category.VIOLENCE, pdq=[nearer]),
        ]
    )
    assert matcher.pdq_count == 5_002
    found = matcher.match(ref(image))
    assert found is not None
    assert (found.list_name, found.distance, found.hash) == ("nearer", 3, nearer)


def test_vectorised_distances_equal_the_plain_ones() -> None:
    rng = np.random.default_rng(3)
    hashes = [rng.bytes(32).hex() for _ in range(200)]
    query = rng.bytes(32).hex()
    vectorised = pdq_distances(query, pack_pdq(hashes))
    assert vectorised.tolist() == [hamming_distance(query, value) for value in hashes]
    assert hamming_distance(query, query) == 0
    assert hamming_distance("0" * 64, "f" * 64) == 256


def test_pdq_hex_follows_the_reference_bit_order() -> None:
    # The reference prints bit 255 first; pdqhash returns it first: no reordering either way.
    pixels = np.asarray(photo("camera").resize((64, 64)))
    value, quality = pdq_hash(pixels)
    assert len(value) == 64 and int(value, 16) > 0 and quality > 50
    with pytest.raises(ValueError, match="RGB uint8"):
        pdq_hash(pixels.astype(np.float32))


def flip_bits(value: str, count: int) -> str:
    number = int(value, 16)
    for bit in range(count):
        number ^= 1 << (bit * 7)
    return f"{number:064x}"


def ref(image: PreparedImage) -> ImageRef:
    return image.image_ref("file:///test")


def test_a_16_bit_png_hashes_like_its_8_bit_version() -> None:
    grey = photo("camera").convert("L")
    deep = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)  # mode I;16
    assert deep.mode == "I;16"
    shallow = prepare(encode(grey, "PNG"), LIMITS)
    prepared = prepare(encode(deep, "PNG"), LIMITS)
    assert prepared.hashes.pdq_quality >= 50
    assert hamming_distance(prepared.hashes.pdq, shallow.hashes.pdq) <= 4
