"""The review queue's Prometheus gauges, read from the database at scrape time."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from sqlmodel import Session

from moderation.db.engine import create_tables, make_engine
from moderation.db.models import Review, ReviewStatus
from moderation.events import utc_now
from moderation.services.review.queue_metrics import ReviewQueueCollector
from moderation.settings import Settings


def test_the_queue_gauges_count_reviews_by_state_and_age(tmp_path: Path) -> None:
    engine = make_engine(Settings(), url=f"sqlite:///{tmp_path / 'queue.db'}")
    create_tables(engine)
    now = utc_now()
    with Session(engine) as session:
        for index, (status, minutes_old) in enumerate(
            [(ReviewStatus.PENDING, 30), (ReviewStatus.PENDING, 5), (ReviewStatus.ESCALATED, 90),
             (ReviewStatus.DECIDED, 300)]
        ):  # fmt: skip
            session.add(
                Review(
                    review_id=f"review-p{index}",
                    post_id=f"p{index}",
                    status=status,
                    reason="uncertain",
                    category="spam",
                    created_at=now - timedelta(minutes=minutes_old),
                    escalated_at=now if status is ReviewStatus.ESCALATED else None,
                )
            )
        session.commit()
    registry = CollectorRegistry()
    registry.register(ReviewQueueCollector(engine))
    text = generate_latest(registry).decode()
    assert 'moderation_review_queue{state="pending"} 2.0' in text
    assert 'moderation_review_queue{state="escalated"} 1.0' in text
    assert 'moderation_review_queue{state="claimed"} 0.0' in text
    [sample] = [line for line in text.splitlines() if line.startswith("moderation_review_oldest")]
    oldest = float(sample.split()[1])
    assert 90 * 60 <= oldest < 91 * 60  # the escalated one waits longest
    engine.dispose()


def test_a_scrape_survives_a_database_that_is_gone(tmp_path: Path) -> None:
    engine = make_engine(Settings(), url=f"sqlite:///{tmp_path / 'missing' / 'queue.db'}")
    registry = CollectorRegistry()
    registry.register(ReviewQueueCollector(engine))
    assert "moderation_review_queue" not in generate_latest(registry).decode()
