"""The ingest API (FastAPI): posts in, PostSubmitted events out to Kafka."""

from moderation.services.api.app import build_app

__all__ = ["build_app"]
