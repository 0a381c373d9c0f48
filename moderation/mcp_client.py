"""The MCP server's tools as a client calls them: the official `mcp` client over streamable
HTTP with one of our API keys as the bearer token (`mcp_tools`), and the classifier agent's
decision log read through them (`McpDecisionLog`), so the agent uses the same tools any other
agent platform does (`settings.agent.mcp_url`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from moderation.db.crud.reads import AuthorVerdict
from moderation.precedents import DecisionLog, Precedent, SqlDecisionLog
from moderation.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine


class ToolError(Exception):
    """The tool answered with an error (its text)."""


class McpTools:
    def __init__(self, session: ClientSession) -> None:
        self.session = session

    async def names(self) -> list[str]:
        return sorted(tool.name for tool in (await self.session.list_tools()).tools)

    async def call(self, name: str, **arguments: Any) -> Any:
        result = await self.session.call_tool(name, arguments)
        text = "".join(getattr(part, "text", "") for part in result.content)
        if result.is_error:
            raise ToolError(text)
        if result.structured_content is not None:
            content = result.structured_content
            # A tool returning a list or a string is wrapped as {"result": ...}.
            return content.get("result", content) if set(content) == {"result"} else content
        return json.loads(text)


class McpDecisionLog:
    """`DecisionLog` over the MCP server's `author_recent_verdicts` and `find_precedents`.

    One MCP session per lookup: the agent makes at most two per run, and a session never
    outlives the event loop that opened it.
    """

    def __init__(
        self, url: str, key: str, *, transport: httpx2.AsyncBaseTransport | None = None
    ) -> None:
        self.url = url
        self.key = key
        self.transport = transport  # tests: the server in process

    async def _call(self, name: str, **arguments: Any) -> Any:
        refused: ToolError | None = None
        async with mcp_tools(self.url, self.key, self.transport) as tools:
            try:
                return await tools.call(name, **arguments)
            except ToolError as error:
                refused = error  # raised outside the session: its task group would wrap it
        raise refused

    async def author_verdicts(
        self, author_id: str, *, limit: int, exclude_post_id: str
    ) -> list[AuthorVerdict]:
        rows = await self._call(
            "author_recent_verdicts", author_id=author_id, exclude_post_id=exclude_post_id,
            limit=limit,
        )  # fmt: skip
        return [
            AuthorVerdict(
                post_id=row["post_id"],
                stage=row["stage"],
                decision=row["decision"],
                primary_category=row["category"],
                occurred_at=datetime.fromisoformat(row["occurred_at"]),
            )
            for row in rows
        ]

    async def precedents(self, text: str, *, limit: int) -> list[Precedent]:
        rows = await self._call("find_precedents", text=text, limit=limit)
        return [
            Precedent(
                post_id=row["post_id"],
                text=row["text"],
                label=row["label"],
                decision=row["decision"],
                note=row.get("note"),
                similarity=row["similarity"],
            )
            for row in rows
        ]


@asynccontextmanager
async def mcp_tools(
    url: str, key: str | None, transport: httpx2.AsyncBaseTransport | None = None
) -> AsyncIterator[McpTools]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        httpx2.AsyncClient(headers=headers, transport=transport, timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield McpTools(session)


def agent_decision_log(settings: Settings, engine: Engine) -> DecisionLog:
    """The agent's decision log: through the MCP server when `agent.mcp_url` is set, else read
    in process from the read model."""
    agent = settings.agent
    if agent.mcp_url:
        key = agent.mcp_api_key.get_secret_value() if agent.mcp_api_key else ""
        return McpDecisionLog(agent.mcp_url, key)
    return SqlDecisionLog(engine, pool_size=agent.precedent_pool)
