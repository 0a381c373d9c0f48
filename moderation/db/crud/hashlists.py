"""Known-bad image hash lists kept in the database: added by admins, or by a moderator's
removal that lists the post's images; read by the worker's matcher beside the lists in files.

Lists are global (they protect every tenant), one category each; an entry is unique per (list,
kind, hash), so adding a hash twice adds nothing. Every addition is audited (`hashlist.add`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import sqlalchemy as sa
from sqlmodel import Session

from moderation.db.crud._sql import _insert_ignore, _table
from moderation.db.crud.audit import append_audit
from moderation.db.models import HashListEntry
from moderation.events import ImageRef, utc_now
from moderation.images.hashlists import HashEntry, HashKind, HashList
from moderation.taxonomy import Category

ENTRIES = _table(HashListEntry)
AUDIT_ENTITY_HASHLIST = "hashlist"


class HashListSummary(NamedTuple):
    name: str
    category: str
    entries: int
    updated_at: datetime


class CategoryConflict(ValueError):
    """The list exists with another category."""


def list_category(session: Session, *, name: str) -> str | None:
    """The category of the list `name`, or None when it has no entries."""
    found = session.execute(
        sa.select(ENTRIES.c.category).where(ENTRIES.c.list_name == name).limit(1)
    ).scalar_one_or_none()
    return str(found) if found is not None else None


def add_hash_entries(
    session: Session, *, hashlist: HashList, actor: str, at: datetime | None = None
) -> int:
    """Add the entries of `hashlist` (validated by `HashList`) to the database's list of that
    name; returns how many were new. Audited in the same transaction.

    Raises:
        CategoryConflict: the list already holds another category.
    """
    at = at or utc_now()
    existing = list_category(session, name=hashlist.name)
    if existing is not None and existing != hashlist.category.value:
        raise CategoryConflict(
            f"list '{hashlist.name}' is of category '{existing}', not '{hashlist.category.value}'"
        )
    rows = [
        {
            "list_name": hashlist.name,
            "category": hashlist.category.value,
            "kind": entry.kind.value,
            "hash": entry.hash,
            "note": entry.note,
            "added_by": actor,
            "added_at": at,
        }
        for entry in hashlist.entries
    ]
    added = _insert_ignore(session, ENTRIES, rows, ["list_name", "kind", "hash"])
    append_audit(
        session,
        actor=actor,
        action="hashlist.add",
        entity=AUDIT_ENTITY_HASHLIST,
        entity_id=hashlist.name,
        before=None,
        after={"category": hashlist.category.value, "offered": len(rows), "added": added},
        at=at,
        commit=False,
    )
    session.commit()
    return added


def image_entries(images: Sequence[ImageRef], note: str) -> list[HashEntry]:
    """What lists an image: its PDQ hash, and the SHA-256 and MD5 of the file as uploaded."""
    entries = []
    for image in images:
        entries += [
            HashEntry(HashKind.PDQ, image.pdq, note),
            HashEntry(HashKind.SHA256, image.original_sha256, note),
            HashEntry(HashKind.MD5, image.original_md5, note),
        ]
    return entries


def hashlist_size(session: Session, *, name: str) -> int:
    """How many entries the database's list `name` holds."""
    return int(
        session.execute(
            sa.select(sa.func.count()).select_from(ENTRIES).where(ENTRIES.c.list_name == name)
        ).scalar_one()
    )


def hashlist_summaries(session: Session) -> list[HashListSummary]:
    """Every database list: its category, entries and last addition, by name."""
    rows = session.execute(
        sa.select(
            ENTRIES.c.list_name,
            sa.func.min(ENTRIES.c.category),
            sa.func.count(),
            sa.func.max(ENTRIES.c.added_at),
        )
        .group_by(ENTRIES.c.list_name)
        .order_by(ENTRIES.c.list_name)
    ).all()
    return [HashListSummary(str(n), str(c), int(k), u) for n, c, k, u in rows]


def database_hashlists(session: Session) -> list[HashList]:
    """Every database list, for the matcher."""
    rows = session.execute(
        sa.select(
            ENTRIES.c.list_name, ENTRIES.c.category, ENTRIES.c.kind, ENTRIES.c.hash, ENTRIES.c.note
        ).order_by(ENTRIES.c.list_name, ENTRIES.c.id)
    ).all()
    grouped: dict[tuple[str, str], list[HashEntry]] = {}
    for name, category, kind, value, note in rows:
        grouped.setdefault((str(name), str(category)), []).append(
            HashEntry(HashKind(kind), str(value), str(note or ""))
        )
    return [
        HashList(name, Category(category), tuple(entries))
        for (name, category), entries in grouped.items()
    ]
