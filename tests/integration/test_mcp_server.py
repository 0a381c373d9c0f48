"""The MCP server as a process on the real stack (PostgreSQL, the registry's fast model): the
official `mcp` client calls its tools over streamable HTTP with an API key."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.devtools.stack.services import PipelineServices
from moderation.mcp_client import ToolError, mcp_tools
from moderation.settings import Settings
from tests.integration.streams import running_services

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def services(settings: Settings, postgres: PostgresCluster) -> Iterator[PipelineServices]:
    with running_services(PipelineServices(settings), "mcp") as running:
        yield running


async def test_the_tools_answer_over_streamable_http_with_an_api_key(
    services: PipelineServices, settings: Settings, read_model: Engine, unique: str
) -> None:
    with Session(read_model) as session:
        reader, _ = crud.create_api_key(session, name=f"mcp-{unique}", scopes=["read"])
    url = f"http://127.0.0.1:{settings.mcp.port}/mcp"
    async with mcp_tools(url, reader) as tools:
        names = await tools.names()
        scored = await tools.call("moderate_text", text="Buy cheap followers now!!! click here")
        section = await tools.call("get_policy_section", category="hate")
        with pytest.raises(ToolError, match="`moderate` scope"):
            await tools.call("author_recent_verdicts", author_id="someone")

    assert {"moderate_text", "get_post_trail", "find_precedents", "get_policy_section"} <= set(
        names
    )
    assert scored["decision"] in {"allow", "remove", "review"}
    assert set(scored["scores"]) >= {"safe", "spam"} and scored["model_version"].startswith("fast")
    assert section["policy_version"] == settings.models.policy_version
    async with httpx.AsyncClient(timeout=10) as http:
        refused = await http.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Authorization": "Bearer mod_wrong-key",
                     "Accept": "application/json, text/event-stream"},
        )  # fmt: skip
    assert refused.status_code == 401
