"""Shapes of `/v1/reports`: a user's report of a post, and what became of it."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, field_validator
from sqlmodel import Field, SQLModel

from moderation.taxonomy import VIOLATING

REPORT_REASONS: tuple[str, ...] = tuple(category.value for category in VIOLATING)
MAX_REPORT_TEXT = 2_000


class ReportCreate(SQLModel):
    """A report of a post, by one of the platform's users."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    post_id: str = Field(min_length=1, max_length=64)
    reason: str = Field(
        max_length=32, description="the violated category: " + ", ".join(REPORT_REASONS)
    )
    text: str = Field(default="", max_length=MAX_REPORT_TEXT, description="the reporter's words")
    reporter_id: str = Field(
        min_length=1, max_length=128, description="the reporting user, in the platform's ids"
    )

    @field_validator("post_id", "text", "reporter_id")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("contains a NUL character")
        return value

    @field_validator("reason")
    @classmethod
    def _known_reason(cls, value: str) -> str:
        if value not in REPORT_REASONS:
            raise ValueError(
                f"unknown reason {value[:32]!r}; choose one of {', '.join(REPORT_REASONS)}"
            )
        return value


class ReportPublic(SQLModel):
    """A report: open until a moderator decides the post (upheld: removed; rejected: allowed)."""

    report_id: str
    post_id: str
    reporter_id: str
    reason: str
    text: str
    status: Literal["open", "upheld", "rejected"]
    weight: float = Field(description="the reporter's reliability when reporting, 0 to 1")
    created_at: datetime
    resolved_at: datetime | None
    review_id: str | None = Field(
        default=None, description="the review this report reopened, when it did"
    )
