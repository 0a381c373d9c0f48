"""The dashboard's settings: its own section of the settings tree, and nothing else.

The dashboard calls only the review API, with each moderator's own key. The full `Settings`
also holds the database password, the LLM key and the Dapr tokens, and refuses to start outside
development until each is set: reading it here would force those secrets into a pod that never
uses them (issue 11, finding 4). This reads the same variables (`MODERATION_DASHBOARD__*`, and
`MODERATION_WORKER__SERVICE_HOST` for where Streamlit listens), so nothing else changes.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic_settings import BaseSettings

from moderation.settings import SETTINGS_SOURCE, DashboardSettings, WorkerSettings


class DashboardProcessSettings(BaseSettings):
    """What the dashboard process reads; it holds no secret, so there is none to check."""

    model_config = SETTINGS_SOURCE

    environment: Literal["development", "test", "production"] = "development"
    dashboard: DashboardSettings = DashboardSettings()
    worker: WorkerSettings = WorkerSettings()


@lru_cache(maxsize=1)
def get_dashboard_settings() -> DashboardProcessSettings:
    """The dashboard's settings (read once from the environment)."""
    return DashboardProcessSettings()
