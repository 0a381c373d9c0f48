"""Suite-wide rules: an integration test never passes by being skipped; a messaging test runs
in memory and against the local Kafka (`messaging`); each integration test has a lane
(`scripts/test-lanes` runs the `llm` lane beside the rest, then the `disruptive` tests alone)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator

import pytest

from moderation.settings import Settings
from tests.messaging import Messaging, kafka_run

# Tests that start no service process (the services bind fixed ports and log files, so two of
# them cannot run at once) and mostly wait for the local LLM server or train on the CPU: they
# run in a lane of their own, beside the rest of the suite.
LLM_LANE = (
    "tests/integration/test_commands.py::test_demo_prints_a_verdict_for_every_sample",
    "tests/integration/test_llm_agent.py",
    "tests/integration/test_lora_training.py",
)
# Tests that stop, kill or restart a shared component (Kafka, PostgreSQL, a daprd, the LLM
# endpoint, the stack itself): they run alone, after both lanes, so no other test sees it.
DISRUPTIVE = (
    "tests/integration/test_kafka.py::test_idempotent_producer_and_group_resume_across_broker_restart",
    "tests/integration/test_api_real.py::test_kafka_outage_gives_503_never_202_and_every_202_lands",
    "tests/integration/test_recorder_real.py::test_postgres_restart_under_load_loses_and_doubles_nothing",
    "tests/integration/test_review_flow.py::test_review_service_and_daprd_killed_mid_wait_the_same_workflow_completes",
    "tests/integration/test_dapr.py::test_workflow_survives_daprd_crash_while_waiting",
    "tests/integration/test_agent_cascade.py::test_llm_server_stopped_mid_run_sends_posts_to_review_and_loses_none",
    "tests/integration/test_stack_lifecycle.py",
)


def _in(nodeid: str, selectors: tuple[str, ...]) -> bool:
    return any(nodeid == s or nodeid.startswith(s + "::") for s in selectors)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its lane (`-m "llm"`, `-m "disruptive"`); the lanes are explicit."""
    collected = {item.nodeid.split("::")[0] for item in items}
    for selector in LLM_LANE + DISRUPTIVE:
        if selector.split("::")[0] in collected and not any(
            _in(i.nodeid, (selector,)) for i in items
        ):
            raise pytest.UsageError(f"lane selector {selector!r} matches no test: renamed?")
    for item in items:
        if _in(item.nodeid, DISRUPTIVE):
            item.add_marker(pytest.mark.disruptive)
        elif _in(item.nodeid, LLM_LANE):
            item.add_marker(pytest.mark.llm)


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
