"""The MCP server: the moderation system's lookups as tools any agent platform can call.

Built with the official `mcp` Python SDK (`MCPServer`, streamable HTTP at `/mcp`) and served
by `moderation mcp-server` (port `settings.mcp.port`). Every call carries an API key of ours as
its bearer token (`ApiKeyVerifier`: the same keys, hashes and revocation as the REST API); each
tool checks its scope:

| tool | scope | what |
|---|---|---|
| `moderate_text` | read | stage 1 and the injection screen on a text (read-only) |
| `get_post_trail` | read | a post's status, verdicts, reviews and decisions (its key's tenants) |
| `get_policy_section` | read | a category's section of the moderation policy in force |
| `find_precedents` | moderate | the past human decisions on the most similar posts |
| `author_recent_verdicts` | moderate | the latest verdicts on an author's other posts |

`/healthz` answers its probes, `/metrics` counts the calls by tool and outcome.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from pydantic import AnyHttpUrl
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from moderation.actors import key_actor
from moderation.classifier.cascade import Scorer, first_stage
from moderation.db import crud
from moderation.events import PostSubmitted
from moderation.policy import load_policy
from moderation.precedents import DecisionLog
from moderation.services.api.security import principal_of
from moderation.settings import Settings
from moderation.taxonomy import Category

logger = logging.getLogger(__name__)

READ, MODERATE, ADMIN = "read", "moderate", "admin"
# The access token's claim holding the tenants the key sees (absent: every tenant).
TENANTS_CLAIM = "tenants"


TOOL_CALLS = Counter(
    "moderation_mcp_tool_calls_total", "MCP tool calls, by tool and outcome", ["tool", "outcome"]
)


class ToolRefused(ToolError):
    """The calling key lacks the tool's scope (the caller is told so)."""


class ApiKeyVerifier:
    """Bearer tokens are our API keys: valid, not revoked, with their scopes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _verify(self, token: str) -> AccessToken | None:
        with Session(self.engine) as session:
            key = crud.authenticate_api_key(session, key=token)
        if key is None or key.id is None:
            return None
        tenants = principal_of(key).tenants
        return AccessToken(
            token=token,
            client_id=key_actor(key.id),
            scopes=list(key.scopes),
            claims={TENANTS_CLAIM: sorted(tenants)} if tenants is not None else {},
        )

    async def verify_token(self, token: str) -> AccessToken | None:
        return await asyncio.to_thread(self._verify, token)


def require_scope(scope: str, tool: str) -> str:
    """The caller's actor (`key:<id>`) when its key has `scope` (admin has every scope)."""
    token = get_access_token()
    if token is None or (scope not in token.scopes and ADMIN not in token.scopes):
        TOOL_CALLS.labels(tool=tool, outcome="refused").inc()
        raise ToolRefused("no API key" if token is None else f"this tool needs the `{scope}` scope")
    TOOL_CALLS.labels(tool=tool, outcome="called").inc()
    return token.client_id


def caller_tenants() -> frozenset[str] | None:
    """The tenants the calling key sees (None: every tenant), as `ApiKeyVerifier` put them."""
    token = get_access_token()
    if token is None:
        return frozenset()  # unreachable behind `require_scope`; see nothing rather than all
    claims = token.claims or {}
    return frozenset(claims[TENANTS_CLAIM]) if TENANTS_CLAIM in claims else None


def build_server(
    settings: Settings,
    engine: Engine,
    *,
    scorer: Callable[[], Scorer],
    decisions: DecisionLog,
) -> MCPServer[Any]:
    """The MCP server's tools over the read model, the policy and the served fast model.

    `scorer` returns the fast model to score with (the registry's champion, loaded lazily).
    """
    base_url = f"http://{settings.worker.service_host}:{settings.mcp.port}"
    server: MCPServer[Any] = MCPServer(
        name="moderation",
        instructions="Content moderation lookups: score a text, read a post's moderation "
        "trail, the policy, precedents and an author's history.",
        token_verifier=ApiKeyVerifier(engine),
        auth=AuthSettings(
            issuer_url=AnyHttpUrl(base_url),  # the keys are issued by this system's own API
            resource_server_url=AnyHttpUrl(f"{base_url}/mcp"),
            required_scopes=[],
            # The verifier knows our keys are for this server alone (no audience to check).
            validate_token_resource=False,
        ),
    )
    policy = load_policy(settings.models.policy_version)

    @server.tool(description="Score a text with stage 1 (the fast model and the injection "
                 "screen): per-category probabilities, the decision stage 1 would take, the "
                 "screen's signals. Read-only: nothing is recorded.")  # fmt: skip
    async def moderate_text(text: str) -> dict[str, Any]:
        require_scope(READ, "moderate_text")
        post = PostSubmitted(post_id=f"mcp-{uuid.uuid4().hex}", text=text, author_id="mcp")
        [result] = await asyncio.to_thread(
            first_stage, [post], scorer(), settings, agent_enabled=False
        )
        verdict = result.verdict
        return {
            "decision": verdict.decision.value,
            "primary_category": verdict.primary_category.value,
            "confidence": verdict.confidence,
            "scores": {category.value: score for category, score in verdict.scores.items()},
            "signals": verdict.signals,
            "reason": result.outcome.reason,
            "model_version": verdict.model_version,
            "policy_version": verdict.policy_version,
        }

    @server.tool(description="A post's moderation trail: status, verdicts, reviews, decisions.")
    async def get_post_trail(post_id: str) -> dict[str, Any]:
        require_scope(READ, "get_post_trail")
        tenants = caller_tenants()

        def read() -> dict[str, Any] | None:
            with Session(engine) as session:
                # Another tenant's post is "not found", exactly as an unknown one.
                trail = crud.post_trail(session, post_id=post_id, tenants=tenants)
            return trail.model_dump(mode="json") if trail is not None else None

        trail = await asyncio.to_thread(read)
        if trail is None:
            raise ToolError(f"post {post_id!r} not found")
        return trail

    @server.tool(description="The moderation policy's section on one category.")
    async def get_policy_section(category: Category) -> dict[str, str]:
        require_scope(READ, "get_policy_section")
        return {"policy_version": policy.version, "section": policy.section(category)}

    @server.tool(description="Past decisions of human moderators on the posts most similar to "
                 "a text, most similar first.")  # fmt: skip
    async def find_precedents(text: str, limit: int = 3) -> list[dict[str, Any]]:
        require_scope(MODERATE, "find_precedents")
        found = await decisions.precedents(text, limit=max(1, min(limit, 20)))
        return [
            {"post_id": p.post_id, "similarity": p.similarity, "label": p.label,
             "decision": p.decision, "note": p.note, "text": p.text[:200]}
            for p in found
        ]  # fmt: skip

    @server.tool(description="The latest verdicts on an author's posts, newest first.")
    async def author_recent_verdicts(
        author_id: str, exclude_post_id: str = "", limit: int = 10
    ) -> list[dict[str, Any]]:
        require_scope(MODERATE, "author_recent_verdicts")
        verdicts = await decisions.author_verdicts(
            author_id, limit=max(1, min(limit, 50)), exclude_post_id=exclude_post_id
        )
        return [
            {"post_id": v.post_id, "stage": v.stage, "decision": v.decision,
             "category": v.primary_category, "occurred_at": v.occurred_at.isoformat()}
            for v in verdicts
        ]  # fmt: skip

    @server.custom_route("/healthz", methods=["GET"])  # type: ignore[untyped-decorator]
    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @server.custom_route("/metrics", methods=["GET"])  # type: ignore[untyped-decorator]
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return server


def run_mcp_server(settings: Settings) -> None:
    """`moderation mcp-server`: serve the tools until stopped."""
    from moderation.classifier.fast.store import ensure_fast_model
    from moderation.db.engine import make_engine
    from moderation.precedents import SqlDecisionLog
    from moderation.services.worker.registry_watch import RegistryWatch

    engine = make_engine(settings)
    served: dict[str, Scorer] = {}

    def serve(model: Any) -> None:
        served["model"] = model

    watch = RegistryWatch(engine, settings, serve=serve)
    server = build_server(
        settings,
        engine,
        scorer=lambda: served["model"],
        decisions=SqlDecisionLog(engine, pool_size=settings.agent.precedent_pool),
    )
    host = settings.worker.service_host
    app = server.streamable_http_app(host=host)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[None]:
        # The champion the worker serves, following promotions, as the worker does.
        await watch.start(lambda: ensure_fast_model(settings))
        async with inner(application):
            yield
        await watch.stop()
        engine.dispose()

    app.router.lifespan_context = lifespan
    uvicorn.run(app, host=host, port=settings.mcp.port, log_level="warning", loop="asyncio")
