"""Suite-wide rules: an integration test never passes by being skipped; a messaging test runs
in memory and against the local Kafka (`messaging`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator

import pytest

from moderation.settings import Settings
from tests.messaging import Messaging, kafka_run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """Turn a skipped integration test into a failure: its real component must be there."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.skipped and item.get_closest_marker("integration") is not None:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"integration test was skipped ({reason}); integration tests must run against the "
            "real local stack (`make stack-up`)"
        )


@pytest.fixture(autouse=True)
def no_unexpected_model_calls(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside integration tests, a real model call fails the test (scripted models only)."""
    if request.node.get_closest_marker("integration") is not None:
        return
    from agents.models.openai_chatcompletions import OpenAIChatCompletionsModel
    from agents.models.openai_responses import OpenAIResponsesModel

    async def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a unit test called a real model; use tests.scripted_llm")

    monkeypatch.setattr(OpenAIChatCompletionsModel, "get_response", refuse)
    monkeypatch.setattr(OpenAIResponsesModel, "get_response", refuse)


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.integration)])
async def messaging(request: pytest.FixtureRequest) -> AsyncIterator[Messaging]:
    """Each messaging test twice: in memory, then through the local Kafka (`tests.messaging`)."""
    if request.param == "memory":
        yield Messaging("memory", Settings())
        return
    async with kafka_run(Settings()) as run:
        yield run
