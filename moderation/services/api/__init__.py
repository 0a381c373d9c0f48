"""The ingest API (FastAPI): posts in, PostSubmitted events out to Kafka."""

from moderation.services.api.app import create_app

__all__ = ["create_app"]
