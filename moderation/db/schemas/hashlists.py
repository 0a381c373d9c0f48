"""Shapes of `/v1/hashlists`: known-bad image hash lists kept in the database."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from moderation.taxonomy import Category


class HashEntryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["pdq", "md5", "sha256"]
    hash: str = Field(min_length=32, max_length=64, description="hex")
    note: str = Field(default="", max_length=500)


class HashEntriesIn(BaseModel):
    """Hashes to add to a list (created by its first entries, with their category)."""

    model_config = ConfigDict(extra="forbid")

    category: Category = Field(description="the list's category (never safe)")
    entries: list[HashEntryIn] = Field(min_length=1, max_length=10_000)


class HashEntriesAdded(BaseModel):
    name: str
    category: Category
    added: int = Field(description="entries new to the list (a repeat adds nothing)")
    entries: int = Field(description="the list's entries now")


class HashListPublic(BaseModel):
    name: str
    category: str
    entries: int
    updated_at: datetime


class HashListsPublic(BaseModel):
    """The lists kept in the database (the worker also reads lists from `images.hashlist_dir`)."""

    items: list[HashListPublic]
