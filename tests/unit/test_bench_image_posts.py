"""The image-posts bench's inputs (`moderation bench --image-posts`; the run itself needs the
stack and is exercised by hand, its numbers are in the issue note): ~1 MP photos from installed
wheels, and a hash list that names the listed one and no other."""

from __future__ import annotations

from pathlib import Path

from moderation.devtools.bench.image_posts import _photos, _write_list
from moderation.images.hashlists import HashMatcher, load_hashlists
from moderation.images.intake import ImageLimits, prepare
from moderation.settings import Settings


def test_the_photos_are_about_a_megapixel_and_only_the_last_is_listed(tmp_path: Path) -> None:
    settings = Settings()
    photos = _photos()
    limits = ImageLimits.from_settings(settings.images)
    prepared = [prepare(photo, limits) for photo in photos]
    for image in prepared:
        assert 900_000 <= image.width * image.height <= 1_100_000
    _write_list(tmp_path, photos[-1], settings)
    matcher = HashMatcher(load_hashlists(tmp_path))
    matched = [matcher.match(image.image_ref("file:///x")) is not None for image in prepared]
    assert matched == [False] * (len(photos) - 1) + [True]
