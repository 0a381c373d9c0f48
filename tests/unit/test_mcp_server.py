"""The MCP server's tools through the official `mcp` client, in process (streamable HTTP over an
ASGI transport), on a SQLite read model with a scripted fast model."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.classifier.agent_steps import AgentSteps, handoff
from moderation.classifier.cascade import first_stage
from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.events import ModerationVerdict, PostSubmitted
from moderation.mcp_client import McpDecisionLog, ToolError, mcp_tools
from moderation.precedents import Precedent
from moderation.services.mcp.app import build_server
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage
from tests.scripted_llm import ScriptedModel, ScriptedProvider, allow_json

URL = "http://127.0.0.1:8006/mcp"


class SpamScorer:
    version = "scripted-mcp"

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        scores = np.full((len(texts), len(CATEGORIES)), 0.01)
        scores[:, CATEGORIES.index(Category.SPAM)] = 0.97
        return scores


class FakeDecisions:
    async def precedents(self, text: str, *, limit: int) -> list[Precedent]:
        return [Precedent("p-9", "win a cruise", "spam", "remove", None, 0.8)][:limit]

    async def author_verdicts(
        self, author_id: str, *, limit: int, exclude_post_id: str
    ) -> list[crud.AuthorVerdict]:
        return [crud.AuthorVerdict("p-0", "model", "remove", "spam", datetime.now(UTC))]


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = make_engine(Settings(), url=f"sqlite:///{tmp_path / 'mcp.db'}")
    create_tables(engine)
    return engine


def key(engine: Engine, *scopes: str) -> str:
    with Session(engine) as session:
        plaintext, _ = crud.create_api_key(session, name="agent-platform", scopes=list(scopes))
    return plaintext


@asynccontextmanager
async def served(engine: Engine) -> AsyncIterator[httpx2.AsyncBaseTransport]:
    """The server's ASGI app in process, its lifespan running (entered and left in one task)."""
    server = build_server(
        Settings(),
        engine,
        scorer=SpamScorer,
        decisions=FakeDecisions(),
    )
    app = server.streamable_http_app(host="127.0.0.1")
    async with app.router.lifespan_context(app):
        yield httpx2.ASGITransport(app=app)


async def test_the_tools_answer_a_key_with_their_scopes(engine: Engine) -> None:
    post = PostSubmitted(post_id="p-1", text="buy now", author_id="a-1")
    verdict = ModerationVerdict(
        post_id="p-1", decision=Decision.REMOVE, scores=dict.fromkeys(CATEGORIES, 0.1),
        primary_category=Category.SPAM, confidence=0.9, stage=Stage.MODEL,
        model_version="m-1", policy_version="v1", latency_ms=3.0, config_version="c2",
    )  # fmt: skip
    with Session(engine) as session:
        crud.record_events(session, events=[post, verdict])

    async with (
        served(engine) as transport,
        mcp_tools(URL, key(engine, "read", "moderate"), transport) as tools,
    ):
        assert await tools.names() == [
            "author_recent_verdicts", "find_precedents", "get_policy_section",
            "get_post_trail", "moderate_text",
        ]  # fmt: skip
        scored = await tools.call("moderate_text", text="cheap pills, click here")
        trail = await tools.call("get_post_trail", post_id="p-1")
        section = await tools.call("get_policy_section", category="spam")
        precedents = await tools.call("find_precedents", text="win a cruise", limit=1)
        history = await tools.call("author_recent_verdicts", author_id="a-1")

    assert scored["decision"] == "remove" and scored["primary_category"] == "spam"
    assert scored["model_version"] == "scripted-mcp"
    assert trail["status"] == "removed" and trail["verdicts"][0]["config_version"] == "c2"
    assert section["policy_version"] == Settings().models.policy_version
    assert "spam" in section["section"].lower()
    assert precedents == [
        {"post_id": "p-9", "similarity": 0.8, "label": "spam", "decision": "remove",
         "note": None, "text": "win a cruise"}
    ]  # fmt: skip
    [entry] = history
    assert (entry["post_id"], entry["stage"], entry["decision"], entry["category"]) == (
        "p-0", "model", "remove", "spam",
    )  # fmt: skip


async def test_a_tool_refuses_a_key_without_its_scope_and_unknown_posts(engine: Engine) -> None:
    async with served(engine) as transport, mcp_tools(URL, key(engine, "read"), transport) as tools:
        with pytest.raises(ToolError, match="`moderate` scope"):
            await tools.call("find_precedents", text="x")
        with pytest.raises(ToolError, match="not found"):
            await tools.call("get_post_trail", post_id="nope")


@pytest.mark.parametrize("bearer", [None, "mod_not-a-key"])
async def test_no_key_or_a_bad_one_is_refused_before_any_tool(
    engine: Engine, bearer: str | None
) -> None:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    async with (
        served(engine) as transport,
        httpx2.AsyncClient(transport=transport, headers=headers) as http,
    ):
        response = await http.post(
            URL,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Accept": "application/json, text/event-stream"},
        )
    assert response.status_code == 401


async def test_the_agents_lookups_go_through_the_mcp_server(engine: Engine) -> None:
    """The agent's tools read the decision log through MCP, as any other platform would."""
    request = handoff(
        first_stage([PostSubmitted(post_id="p-2", text="hmm", author_id="a-1")], SpamScorer(),
                    Settings(), agent_enabled=True)[0]
    )  # fmt: skip
    async with served(engine) as transport:
        log = McpDecisionLog(URL, key(engine, "moderate"), transport=transport)
        steps = AgentSteps(Settings(), ScriptedProvider(ScriptedModel([allow_json()])), log)
        author = await steps.tool_call(
            request, {"name": "author_recent_verdicts", "call_id": "c1", "arguments": "{}"}
        )
        similar = await steps.tool_call(
            request, {"name": "similar_precedents", "call_id": "c2", "arguments": "{}"}
        )
        refused = McpDecisionLog(URL, key(engine, "read"), transport=transport)
        with pytest.raises(ToolError, match="`moderate` scope"):
            await refused.precedents("x", limit=1)

    assert json.loads(author["output"]) == [
        {"stage": "model", "decision": "remove", "category": "spam"}
    ]
    assert json.loads(similar["output"])[0]["label"] == "spam"
