"""The nightly's shareable hash lists: the images humans removed, per category.

The hash-sharing model of ThreatExchange and Hasher-Matcher-Actioner: a platform shares the
hashes of what its moderators removed, never the images. Each night the job writes, for every
category with removed images, `<export_dir>/<category>/human-removed.csv` in the format the
worker reads (`moderation/images/hashlists.py`: `kind,hash,note`), with each image's PDQ hash and
the SHA-256 and MD5 of the file as uploaded; the note names the post. Copying such a file into
another deployment's `images.hashlist_dir` (or this one's, to match re-uploads) makes it a list.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.events import ImageRef
from moderation.images.hashlists import HashEntry, HashKind, HashList, write_hashlist
from moderation.taxonomy import Category

LIST_NAME = "human-removed"


def export_removed_image_hashes(
    engine: Engine, export_dir: Path, *, until: datetime
) -> dict[str, int]:
    """Write the lists; returns the number of images per category written."""
    with Session(engine) as session:
        removed = crud.removed_images(session, until=until)
    entries: dict[Category, dict[tuple[HashKind, str], HashEntry]] = {}
    for post in removed:
        category = Category(post.label)
        if category is Category.SAFE:
            continue  # a removal is always of a violating label; never list a safe one
        found = entries.setdefault(category, {})
        for raw in post.images:
            image = ImageRef.model_validate(raw)
            note = f"post {post.post_id}, removed {post.decided_at.date().isoformat()}"
            for kind, value in (
                (HashKind.PDQ, image.pdq),
                (HashKind.SHA256, image.original_sha256),
                (HashKind.MD5, image.original_md5),
            ):
                found.setdefault((kind, value), HashEntry(kind, value, note))
    written = {}
    for category, by_hash in sorted(entries.items()):
        hashlist = HashList(LIST_NAME, category, tuple(by_hash.values()))
        write_hashlist(export_dir, hashlist)
        written[category.value] = sum(1 for kind, _ in by_hash if kind is HashKind.PDQ)
    return written
