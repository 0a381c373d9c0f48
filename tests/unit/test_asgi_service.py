"""What every FastStream service gets from `asgi_service` at start-up."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from faststream import TestApp
from faststream.kafka import KafkaBroker, TestKafkaBroker

from moderation.services.asgi import asgi_service


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
async def test_what_start_up_made_is_frozen_out_of_the_collectors_passes() -> None:
    loaded: list[object] = []

    async def load_models() -> None:
        loaded.append({"model": [object() for _ in range(1_000)]})

    broker = KafkaBroker()
    app = asgi_service(broker, title="test", description="test", on_startup=[load_models])
    assert gc.get_freeze_count() == 0
    async with TestKafkaBroker(broker), TestApp(app):
        # The models loaded at start-up are in the permanent generation: never rescanned.
        assert loaded and gc.get_freeze_count() >= 1_000
