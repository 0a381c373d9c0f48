"""The nightly's shareable hash lists (`jobs/hash_export.py`): the images of posts whose latest
human decision removed them, per category, in the format the worker's matcher reads."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session

from jobs.hash_export import export_removed_image_hashes
from moderation.db.models import HumanDecision, Post
from moderation.events import ImageRef, utc_now
from moderation.images.hashlists import HashMatcher, load_hashlists
from moderation.taxonomy import Category
from tests.image_samples import image_ref


def post_with(engine: Engine, post_id: str, images: list[ImageRef], decisions: list[str]) -> None:
    """A post and its human decisions (`remove:<label>` or `allow`), in order, a minute apart."""
    start = utc_now() - timedelta(hours=1)
    with Session(engine) as session:
        session.add(
            Post(
                id=post_id,
                text="t",
                author_id="a",
                submitted_at=start,
                images=[image.model_dump(mode="json") for image in images],
            )
        )
        for index, decision in enumerate(decisions):
            action, _, label = decision.partition(":")
            session.add(
                HumanDecision(
                    event_id=f"{post_id}-{index}",
                    review_id=f"review-{post_id}-{index}",
                    post_id=post_id,
                    label=label or "safe",
                    decision=action,
                    moderator_id="key:1",
                    decided_at=start + timedelta(minutes=index + 1),
                )
            )
        session.commit()


def test_removed_images_are_listed_per_category_and_match_again(
    engine: Engine, tmp_path: Path
) -> None:
    removed, kept, overturned, textual = (
        image_ref("removed"),
        image_ref("kept"),
        image_ref("overturned"),
        image_ref("x"),
    )
    post_with(engine, "p-removed", [removed], ["remove:violence"])
    post_with(engine, "p-kept", [kept], ["allow"])
    post_with(engine, "p-overturned", [overturned], ["remove:spam", "allow"])
    post_with(engine, "p-text", [], ["remove:spam"])
    post_with(engine, "p-twice", [textual, removed], ["remove:violence"])

    written = export_removed_image_hashes(engine, tmp_path, until=utc_now())

    assert written == {"violence": 2}  # `removed` once, though two posts had it
    [hashlist] = load_hashlists(tmp_path)
    assert (hashlist.name, hashlist.category) == ("human-removed", Category.VIOLENCE)
    matcher = HashMatcher([hashlist])
    for image in (removed, textual):
        found = matcher.match(image)
        assert found is not None and found.list_name == "human-removed"
    for image in (kept, overturned):
        assert matcher.match(image) is None
    assert "post p-removed" in (tmp_path / "violence" / "human-removed.csv").read_text()
